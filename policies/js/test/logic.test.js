// Native tests of the policy's decisions: `npm test` (node's own test runner), no build needed.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { admission, decision, parseConfig } from '../src/logic.js';

test('an integer priority is the queue priority', () => {
  assert.deepEqual(admission('{"priority":5}'), { tag: 'accept', val: 5n });
  assert.deepEqual(admission('{"priority":-7,"tenant":"acme"}'), { tag: 'accept', val: -7n });
  assert.deepEqual(admission('{"priority":9007199254740991}'), {
    tag: 'accept',
    val: 9007199254740991n,
  });
});

test('a missing or null priority is zero', () => {
  for (const meta of ['{}', '{"tenant":"acme"}', '{"priority":null}']) {
    assert.deepEqual(admission(meta), { tag: 'accept', val: 0n }, meta);
  }
});

test('a non-integer priority is rejected naming the field', () => {
  assert.deepEqual(admission('{"priority":"high"}'), {
    tag: 'reject',
    val: 'field "priority" must be an integer, got "high"',
  });
  for (const meta of [
    '{"priority":1.5}',
    '{"priority":true}',
    '{"priority":[1]}',
    '{"priority":9223372036854775808}',
  ]) {
    const verdict = admission(meta);
    assert.equal(verdict.tag, 'reject', meta);
    assert.match(verdict.val, /"priority"/, meta);
  }
});

test('listed tenants are vetoed with their name, everyone else granted', () => {
  const denied = parseConfig('{"tenants":["evil","worse"]}');
  assert.deepEqual(decision('{"tenant":"evil"}', denied), {
    tag: 'veto',
    val: 'tenant "evil" is denied by policy',
  });
  assert.equal(decision('{"tenant":"worse","priority":3}', denied).tag, 'veto');
  for (const meta of ['{"tenant":"acme"}', '{}', '{"tenant":7}', '{"tenant":"Evil"}']) {
    assert.deepEqual(decision(meta, denied), { tag: 'grant' }, meta);
  }
});

test('the config is optional but must be well formed', () => {
  assert.equal(parseConfig('{}').size, 0);
  assert.deepEqual([...parseConfig('{"tenants":[]}')], []);
  assert.throws(() => parseConfig('{"tenants":"evil"}'), /tenants must be a list of strings/);
  assert.throws(() => parseConfig('{"tenants":["evil",1]}'), /list of strings/);
  assert.throws(() => parseConfig('{"tenants":[],"typo":1}'), /unknown key "typo"/);
  assert.throws(() => parseConfig('[1]'), /must be a table/);
});
