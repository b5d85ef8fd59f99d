"""The converters that turn docstrings, documentation pages and tests into usage code: the
exact text each makes of a small source that holds every case it handles."""

from __future__ import annotations

from tasks.corpus.build import CorpusConfig
from tasks.corpus.docpages import is_user_page, page_examples
from tasks.corpus.docstrings import module_examples
from tasks.corpus.kinds import member_kind
from tasks.corpus.testbodies import module_tests

NUMPYDOC_MODULE = '''"""Frames."""


def head(df, n=5):
    """
    Return the first `n` rows.

    Examples
    --------
    >>> df = pd.DataFrame({'animal': ['alligator', 'bee', 'falcon']})
    >>> df
          animal
    0  alligator
    >>> df.head(2)  # doctest: +SKIP
          animal
    0  alligator

    Select the last rows with :meth:`DataFrame.tail` and ``n``. For example:

    >>> for i in range(2):
    ...     print(df.tail(i))
    Empty DataFrame
    >>> df.columns
    Index(['animal'])

    >>> x = = 1
    """


class Frame:
    """A frame.

    >>> df = pd.DataFrame({'animal': ['alligator', 'bee', 'falcon']})
    >>> df
    """

    def plot(self):
        """Plot it.

        >>> ax = df.plot.scatter(x="a", y="b")
        """
'''


def test_docstring_examples_keep_calls_and_a_comment_from_the_prose_before_them():
    assert module_examples(NUMPYDOC_MODULE) == (
        "# Return the first n rows.\n"
        "df = pd.DataFrame({'animal': ['alligator', 'bee', 'falcon']})\n"
        "df.head(2)\n"
        "\n"
        "# Select the last rows with DataFrame.tail and n.\n"
        "for i in range(2):\n"
        "    print(df.tail(i))\n"
        "\n"
        "# A frame.\n"
        "df = pd.DataFrame({'animal': ['alligator', 'bee', 'falcon']})\n"
        "\n"
        "# Plot it.\n"
        'ax = df.plot.scatter(x="a", y="b")\n'
    )


def test_a_block_already_taken_from_the_same_archive_is_read_once():
    seen: set[bytes] = set()
    first = module_examples(NUMPYDOC_MODULE, seen)
    assert first and module_examples(NUMPYDOC_MODULE, seen) == ""


def test_a_module_without_examples_or_that_does_not_parse_gives_nothing():
    assert module_examples('"""No examples."""\nx = 1\n') == ""
    assert module_examples("def broken(:\n") == ""


def test_cython_docstrings_are_read_without_parsing_the_module():
    pyx = 'cdef int x = 1\n\ndef f():\n    """Sum.\n\n    >>> np.sum([1, 2])\n    3\n    """\n'
    assert module_examples(pyx) == "# Sum.\nnp.sum([1, 2])\n"


RST_PAGE = """\
Plotting
========

Draw a scatter plot of the two columns:

.. code-block:: python

   import matplotlib.pyplot as plt
   plt.scatter(df["a"], df["b"])

.. code-block:: bash

   pip install pandas

Group the rows.

.. ipython:: python
   :okwarning:

   In [1]: grouped = df.groupby("k")

   @savefig grouped.png
   In [2]: grouped.mean().plot()
   Out[2]: <Axes: >

   In [3]: %timeit grouped.sum()

.. plot::

   plt.plot([1, 2, 3])

A doctest block.

>>> s = pd.Series([1, 2])
>>> s
0    1

.. code-block:: python

   x = = 1
"""


def test_rst_pages_give_each_python_block_after_its_paragraph_or_heading():
    assert page_examples(RST_PAGE) == (
        "# Draw a scatter plot of the two columns\n"
        "import matplotlib.pyplot as plt\n"
        'plt.scatter(df["a"], df["b"])\n'
        "\n"
        "# Group the rows.\n"
        'grouped = df.groupby("k")\n'
        "\n"
        "grouped.mean().plot()\n"
        "\n"
        "plt.plot([1, 2, 3])\n"
        "\n"
        "# A doctest block.\n"
        "s = pd.Series([1, 2])\n"
    )


MARKDOWN_PAGE = """\
# Quick start

Fit a model:

```python
model = LinearRegression().fit(X, y)
```

```text
not code
```

```py
model.predict(X)
```
"""


def test_markdown_pages_give_their_python_fences():
    assert page_examples(MARKDOWN_PAGE) == (
        "# Fit a model\nmodel = LinearRegression().fit(X, y)\n\nmodel.predict(X)\n"
    )


def test_api_release_and_developer_pages_are_not_read():
    assert is_user_page("doc/user_guide/merging.rst")
    assert is_user_page("docs/tutorial.md")
    for page in (
        "doc/reference/api/pandas.DataFrame.rst",
        "doc/modules/generated/sklearn.svm.SVC.rst",
        "doc/whatsnew/v2.0.rst",
        "doc/release/1.26.0-notes.rst",
        "doc/development/contributing.rst",
        "doc/conf.py",
    ):
        assert not is_user_page(page), page


TEST_MODULE = '''\
import pytest
import pandas as pd
import pandas._testing as tm


@pytest.fixture
def frame():
    return pd.DataFrame({"a": [1, 2]})


@pytest.mark.parametrize("how", ["left", "right"])
def test_merge_on_index(how, frame):
    """Merging on the index."""
    # GH 12345
    left = pd.DataFrame({"a": [1, 2]})
    result = left.merge(frame, how=how, left_index=True)  # GH#4567
    tm.assert_frame_equal(result, left)
    assert result.shape == (2, 2)
    with pytest.raises(ValueError, match="bad"):
        left.merge(frame, how="bad")


class TestGroupBy:
    def test_groupby_mean(self):
        df = pd.DataFrame({"k": [1, 1], "v": [2.0, 4.0]})
        result = df.groupby("k").mean()
        assert result.loc[1, "v"] == 3.0

    def test_only_checks(self):
        assert True
'''


def test_test_functions_become_their_name_in_words_then_their_body_without_checks():
    text, total, kept = module_tests(TEST_MODULE, "pandas/tests/test_merge.py", 1.0)
    assert (total, kept) == (3, 2)
    assert text == (
        "# merge on index\n"
        'left = pd.DataFrame({"a": [1, 2]})\n'
        "result = left.merge(frame, how=how, left_index=True)\n"
        "\n"
        "# groupby mean\n"
        'df = pd.DataFrame({"k": [1, 1], "v": [2.0, 4.0]})\n'
        'result = df.groupby("k").mean()\n'
    )


def test_the_test_cap_keeps_a_hashed_share_of_the_functions():
    module = "\n\n".join(f"def test_case_{i}():\n    x = f({i})\n" for i in range(400))
    text, total, kept = module_tests(module, "pkg/tests/test_many.py", 0.25)
    assert total == 400 and 70 <= kept <= 130
    assert text.count("# case ") == kept
    again = module_tests(module, "pkg/tests/test_many.py", 0.25)
    assert again == (text, total, kept)  # the same functions each time
    assert module_tests(module, "pkg/tests/test_many.py", 0.5)[0].count("# case ") > kept


def test_each_archive_member_is_read_as_one_kind():
    config = CorpusConfig(
        source="packages",
        packages=["p"],
        member_patterns=["examples/*", "*.ipynb"],
        kinds=["code", "notebooks", "docstrings", "docs", "tests"],
    )
    cases = {
        "examples/plot.py": "code",
        "examples/intro.ipynb": "notebooks",
        "pandas/core/frame.py": "docstrings",
        "pandas/_libs/lib.pyx": "docstrings",
        "pandas/tests/frame/test_api.py": "tests",
        "doc/source/user_guide/io.rst": "docs",
        "doc/whatsnew/v3.0.rst": None,
        "README.md": None,
        "setup.cfg": None,
    }
    assert {path: member_kind(path, config) for path in cases} == cases
    only_code = config.model_copy(update={"kinds": ["code"]})
    assert member_kind("pandas/core/frame.py", only_code) is None
