"""Schemathesis hooks (``SCHEMATHESIS_HOOKS=fuzz_hooks``): now and then a generated id becomes a real one.

Random strings only ever meet "unknown image" answers; to reach the code behind them, half of the
generated cases get real values from ``RADCASCADE_FUZZ_VALUES`` (JSON: parameter name -> values,
e.g. image ids, the app's models, label tags). DELETE routes, training and scoring keep their random
values (removing the fuzzed studies or starting training runs would only slow the run down).
"""

from __future__ import annotations

import json
import os

import schemathesis
from hypothesis import strategies as st

VALUES: dict[str, list] = json.loads(os.environ.get("RADCASCADE_FUZZ_VALUES", "{}"))
RANDOM_ONLY = ("/train", "/scoring")


def _sometimes_real(context, params):
    operation = getattr(context, "operation", None)
    path = getattr(operation, "path", "") or ""
    if not params or getattr(operation, "method", "").upper() == "DELETE" or path.startswith(RANDOM_ONLY):
        return st.just(params)
    keys = [k for k in params if VALUES.get(k)]
    if not keys:
        return st.just(params)
    real = st.fixed_dictionaries({k: st.sampled_from(VALUES[k]) for k in keys}).map(lambda r: {**params, **r})
    return st.one_of(st.just(params), real)


@schemathesis.hook
def flatmap_query(context, query):
    return _sometimes_real(context, query)


@schemathesis.hook
def flatmap_path_parameters(context, path_parameters):
    return _sometimes_real(context, path_parameters)
