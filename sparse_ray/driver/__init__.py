"""Code that runs in the driver process: start or join Ray, fit with Ray Train, publish, submit jobs.

May import ``worker`` (it hands the train loop and its plan to Ray Train) and ``data``; never
``tools`` or ``cli`` (import-linter contracts).
"""
