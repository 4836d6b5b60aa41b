"""`python -m feedback.simulate`: the simulation's documented command, kept where issue 32 names it.

The code lives in `feedback.studies.simulate`.
"""
from feedback.studies.simulate import main

if __name__ == "__main__":
    main()
