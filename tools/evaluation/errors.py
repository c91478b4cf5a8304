"""The one error type of the evaluation tools (matching, reading, scoring, tables, report)."""


class EvalError(ValueError):
    """Bad evaluation input (paths, flags, files); the message is one line naming the path, the rule and the fix."""
