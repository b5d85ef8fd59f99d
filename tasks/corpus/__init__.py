"""Stage corpus: snapshot the source (installed packages, folders, archives, a Hub data set)
as listed groups of files; ``{store}/corpus/{key}``."""

from tasks.stage import Stage

CORPUS = Stage("corpus", inputs=(), code="tasks.corpus.build")
