"""The coordinosaur policy world (wit/policy.wit, `coordinosaur:policy/policy@0.1.0`) in Python:
`WitWorld`'s methods are its exports, `log` its one import. The decisions live in logic.py, which
plain python tests natively.

One instance per channel: `_denied` lives as long as the channel's instance; `init` runs again
whenever the daemon rebuilds it (reload, trap).
"""

import wit_world
from componentize_py_types import Err
from wit_world.imports import log, types

import logic

_denied: frozenset[str] = frozenset()
"""Tenants whose jobs are vetoed; empty before `init`."""


class WitWorld(wit_world.WitWorld):
    def init(self, config: str) -> None:
        global _denied
        try:
            _denied = logic.parse_config(config)
        except ValueError as err:  # json.JSONDecodeError is a ValueError too
            raise Err(str(err))
        log.log(log.Level.INFO, f"python policy: {len(_denied)} denied tenant(s)")

    def admit(self, job: types.Job, state: types.ChannelState) -> types.Admission:
        verdict, value = logic.admission(job.meta)
        if verdict == "accept":
            return types.Admission_Accept(value)
        return types.Admission_Reject(value)

    def before_grant(self, job: types.Job, state: types.ChannelState) -> types.Decision:
        verdict, reason = logic.decision(job.meta, _denied)
        if verdict == "veto":
            log.log(log.Level.DEBUG, f"python policy: vetoing {job.uid}: {reason}")
            return types.Decision_Veto(reason)
        return types.Decision_Grant()

    def on_event(self, event: types.Event, state: types.ChannelState) -> None:
        pass
