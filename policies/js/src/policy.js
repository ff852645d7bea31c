// The coordinosaur policy world (wit/policy.wit, `coordinosaur:policy/policy@0.1.0`) in
// JavaScript: the hooks below are its exports, `log` its one import. The decisions live in
// logic.js, which node tests natively.
//
// One instance per channel: `denied` lives as long as the channel's instance; `init` runs again
// whenever the daemon rebuilds it (reload, trap).

import { log } from 'coordinosaur:policy/log@0.1.0';

import { admission, decision, parseConfig } from './logic.js';

/** Tenants whose jobs are vetoed; empty before `init`. */
let denied = new Set();

/** `result<_, string>`: returning is `ok`, throwing a string is `err(string)`. */
export function init(config) {
  try {
    denied = parseConfig(config);
  } catch (err) {
    throw String(err.message ?? err);
  }
  log('info', `js policy: ${denied.size} denied tenant(s)`);
}

export function admit(job, _state) {
  return admission(job.meta);
}

export function beforeGrant(job, _state) {
  const verdict = decision(job.meta, denied);
  if (verdict.tag === 'veto') {
    log('debug', `js policy: vetoing ${job.uid}: ${verdict.val}`);
  }
  return verdict;
}

export function onEvent(_event, _state) {}
