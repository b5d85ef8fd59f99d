"""Generate a small, varied corpus of Python data-science files at test time."""

from __future__ import annotations

import random
from pathlib import Path

SNIPPETS = [
    "import pandas as pd\ndf = pd.read_csv('{name}.csv')\nprint(df.head())\n",
    "import matplotlib.pyplot as plt\nplt.scatter({x}, {y})\nplt.title('{name}')\nplt.show()\n",
    "from sklearn.linear_model import LinearRegression\nmodel = LinearRegression()\n"
    "model.fit({x}, {y})\npred = model.predict({x})\n",
    "import seaborn as sns\nsns.histplot(data=df, x='{name}')\n",
    "df['{name}'] = df['{x}'].fillna(0)\nsummary = df.groupby('{y}').mean()\n",
    "def {name}_score({x}, {y}):\n    return (({x} - {y}) ** 2).mean()\n",
    "fig, ax = plt.subplots()\nax.plot({x}, {y}, color='red')\n",
]
PLAIN = "def {name}(a, b):\n    return a + b\n\n\nclass {Name}:\n    value = {n}\n"
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "vo", "zi", "pe", "shu", "dra", "gen"]
NAMES = ["sales", "price", "age", "height", "score", "income", "x_train", "y_test", "temp"]


def make_text(rng: random.Random, lines: int, data_science: bool = True) -> str:
    """One file of code: snippets with random names, or plain code without any keyword."""
    if not data_science:
        name = rng.choice(NAMES)
        return PLAIN.format(name=name, Name=name.title(), n=rng.randint(0, 99))
    # A comment of made-up words, different in every file: without it the files' word sets are
    # nearly the same, and near-duplicate removal rightly keeps only a few of them.
    words = ("".join(rng.choices(SYLLABLES, k=3)) for _ in range(16))
    parts = [f"# notes: {' '.join(words)}\n"]
    for _ in range(lines):
        parts.append(
            rng.choice(SNIPPETS).format(
                name=rng.choice(NAMES), x=rng.choice(NAMES), y=rng.choice(NAMES)
            )
        )
    return "\n".join(parts)


def make_corpus(root: Path, files: int = 120, seed: int = 0, plain_files: int = 20) -> Path:
    """Write ``files`` data-science files and ``plain_files`` keyword-free files under root."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        package = root / f"pkg{i % 7}"
        package.mkdir(exist_ok=True)
        (package / f"analysis_{i}.py").write_text(make_text(rng, rng.randint(6, 20)))
    for i in range(plain_files):
        (root / f"plain_{i}.py").write_text(make_text(rng, 0, data_science=False))
    return root
