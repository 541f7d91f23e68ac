"""One module per product stage. Each exposes a pydantic config model and a plain ``run()``.

The CLI, DVC's ``cmd`` and the KFP components all call the same ``run()``.
"""
