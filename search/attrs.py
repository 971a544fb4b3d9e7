"""Names of the attributes zoo search stores in an Optuna study and its trials (one definition each;
no imports, so any search module can read them)."""

FIDELITY_ATTR = "zoo_fidelity"  # study: the rung schedule ({"steps", "eta", "promotion"}); workers must agree
MEASURED_ATTR = "zoo_measured"  # study: throughputs of the final front, measured for real after the sweep
RUNG_ATTR = "rung"  # trial: the highest rung reached


def rung_attr(rung: int) -> str:
    """Trial attribute of one rung's result: ``{"rung", "steps", "values", "feasible"}``."""
    return f"rung_{rung}"
