"""The decisions of the policy, free of any WebAssembly import, so that plain python runs them
(`python -m unittest`, test_logic.py) and app.py only adapts them to the WIT world.

Behaviour (the Rust examples `priority` and `deny` in one policy):

- admit: the queue priority is the registration field `priority` (an integer in the signed 64-bit
  range, default 0; higher is granted first). Anything else rejects the job with a reason naming
  the field.
- before-grant: a job whose field `tenant` is listed in `policy_config.tenants` is vetoed (removed
  from the queue, `rejected/{uid}`) with `tenant "evil" is denied by policy`; every other job is
  granted.
"""

import json

PRIORITY_FIELD = "priority"
"""The registration field holding the queue priority."""
TENANT_FIELD = "tenant"
"""The registration field naming the job's tenant."""
TENANTS_KEY = "tenants"
"""The one key of `policy_config`."""

_I64_MIN = -(2**63)
_I64_MAX = 2**63 - 1


def parse_config(text: str) -> frozenset[str]:
    """The denied tenants of `policy_config` (JSON text): `{}` or `{"tenants": [...]}`.

    Raises ValueError with a readable message otherwise.
    """
    config = json.loads(text)
    if not isinstance(config, dict):
        raise ValueError(f"policy_config must be a table, got {text}")
    for key in config:
        if key != TENANTS_KEY:
            raise ValueError(
                f"unknown key {json.dumps(key)} in policy_config (expected {TENANTS_KEY})"
            )
    tenants = config.get(TENANTS_KEY, [])
    if not isinstance(tenants, list) or not all(isinstance(t, str) for t in tenants):
        raise ValueError(f"{TENANTS_KEY} must be a list of strings, got {json.dumps(tenants)}")
    return frozenset(tenants)


def _field(meta: str, key: str):
    """The field `key` of the job's `meta` (JSON object text); None when absent or null."""
    try:
        fields = json.loads(meta)
    except ValueError:
        return None  # The host always sends an object; nothing to read otherwise.
    return fields.get(key) if isinstance(fields, dict) else None


def admission(meta: str) -> tuple[str, int | str]:
    """`("accept", priority)` or `("reject", reason)` for a job with registration fields `meta`."""
    value = _field(meta, PRIORITY_FIELD)
    if value is None:
        return ("accept", 0)
    # bool is a subclass of int in Python; JSON true is not a priority.
    if isinstance(value, int) and not isinstance(value, bool) and _I64_MIN <= value <= _I64_MAX:
        return ("accept", value)
    shown = json.dumps(value, separators=(",", ":"))
    return ("reject", f"field {json.dumps(PRIORITY_FIELD)} must be an integer, got {shown}")


def decision(meta: str, denied: frozenset[str]) -> tuple[str, str | None]:
    """`("grant", None)` or `("veto", reason)` for a job with registration fields `meta`."""
    tenant = _field(meta, TENANT_FIELD)
    if isinstance(tenant, str) and tenant in denied:
        return ("veto", f"tenant {json.dumps(tenant)} is denied by policy")
    return ("grant", None)
