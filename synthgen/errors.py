"""The input-data error every loader raises: one exception listing every problem, each naming its file."""
from __future__ import annotations


class DataError(ValueError):
    """Raised with EVERY problem found; each line names the file. `.problems: list[str]`."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        # args = (problems,) so the error survives pickling (Ray ships exceptions between processes).
        super().__init__(self.problems)

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return self.problems[0]
        lines = "\n".join(f"  - {p}" for p in self.problems)
        return f"{len(self.problems)} problems with the input data:\n{lines}"
