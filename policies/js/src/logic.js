// The decisions of the policy, free of any WebAssembly import, so that node runs them natively
// (test/logic.test.js) and src/policy.js only adapts them to the WIT world.
//
// Behaviour (the Rust examples `priority` and `deny` in one policy):
// - admit: the queue priority is the registration field `priority` (an integer, default 0;
//   higher is granted first). Anything else rejects the job with a reason naming the field.
// - before-grant: a job whose field `tenant` is listed in `policy_config.tenants` is vetoed
//   (removed from the queue, `rejected/{uid}`) with `tenant "evil" is denied by policy`; every
//   other job is granted.

/** The registration field holding the queue priority. */
export const PRIORITY_FIELD = 'priority';
/** The registration field naming the job's tenant. */
export const TENANT_FIELD = 'tenant';
/** The one key of `policy_config`. */
export const TENANTS_KEY = 'tenants';

/** The largest magnitude JSON.parse keeps exactly; larger integers are refused, not rounded. */
const SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/**
 * Parses `policy_config` (JSON text): `{}` or `{"tenants": ["evil", ...]}`.
 * Returns the set of denied tenants; throws an Error with a readable message otherwise.
 */
export function parseConfig(text) {
  const config = JSON.parse(text);
  if (config === null || typeof config !== 'object' || Array.isArray(config)) {
    throw new Error(`policy_config must be a table, got ${text}`);
  }
  for (const key of Object.keys(config)) {
    if (key !== TENANTS_KEY) {
      throw new Error(`unknown key ${JSON.stringify(key)} in policy_config (expected ${TENANTS_KEY})`);
    }
  }
  const list = config[TENANTS_KEY] ?? [];
  if (!Array.isArray(list) || !list.every((t) => typeof t === 'string')) {
    throw new Error(`${TENANTS_KEY} must be a list of strings, got ${JSON.stringify(list)}`);
  }
  return new Set(list);
}

/** The field `key` of the job's `meta` (JSON object text); `undefined` when absent or null. */
function field(meta, key) {
  let object;
  try {
    object = JSON.parse(meta);
  } catch {
    return undefined; // The host always sends an object; nothing to read otherwise.
  }
  const value = object?.[key];
  return value === null ? undefined : value;
}

/**
 * The admission for a job with registration fields `meta`:
 * `{tag: 'accept', val: BigInt}` or `{tag: 'reject', val: reason}`.
 */
export function admission(meta) {
  const value = field(meta, PRIORITY_FIELD);
  if (value === undefined) {
    return { tag: 'accept', val: 0n };
  }
  if (Number.isInteger(value)) {
    const priority = BigInt(value);
    if (priority <= SAFE && priority >= -SAFE) {
      return { tag: 'accept', val: priority };
    }
  }
  return {
    tag: 'reject',
    val: `field ${JSON.stringify(PRIORITY_FIELD)} must be an integer, got ${JSON.stringify(value)}`,
  };
}

/**
 * The decision for a job with registration fields `meta` under the `denied` tenants:
 * `{tag: 'grant'}` or `{tag: 'veto', val: reason}`.
 */
export function decision(meta, denied) {
  const tenant = field(meta, TENANT_FIELD);
  if (typeof tenant === 'string' && denied.has(tenant)) {
    return { tag: 'veto', val: `tenant ${JSON.stringify(tenant)} is denied by policy` };
  }
  return { tag: 'grant' };
}
