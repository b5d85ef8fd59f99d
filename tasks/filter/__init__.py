"""Stage filter: keep each group's data-science files (``{store}/filter/groups/{key}``), then
drop exact and near duplicates across the groups (``{store}/filter/{key}``)."""

from tasks.stage import Stage

FILTER = Stage(
    "filter",
    inputs=(),
    code="tasks.filter.join",
    group_code="tasks.filter.build",
    libraries=("datasketch",),
)
