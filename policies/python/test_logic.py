"""Native tests of the policy's decisions: `python3 -m unittest -v` in this folder, no build needed."""

import unittest

from logic import admission, decision, parse_config


class Admission(unittest.TestCase):
    def test_an_integer_priority_is_the_queue_priority(self):
        self.assertEqual(admission('{"priority":5}'), ("accept", 5))
        self.assertEqual(admission('{"priority":-7,"tenant":"acme"}'), ("accept", -7))
        self.assertEqual(admission('{"priority":9223372036854775807}'), ("accept", 2**63 - 1))

    def test_a_missing_or_null_priority_is_zero(self):
        for meta in ["{}", '{"tenant":"acme"}', '{"priority":null}']:
            self.assertEqual(admission(meta), ("accept", 0), meta)

    def test_a_non_integer_priority_is_rejected_naming_the_field(self):
        self.assertEqual(
            admission('{"priority":"high"}'),
            ("reject", 'field "priority" must be an integer, got "high"'),
        )
        for meta in [
            '{"priority":1.5}',
            '{"priority":1.0}',
            '{"priority":true}',
            '{"priority":[1]}',
            '{"priority":9223372036854775808}',
        ]:
            verdict, reason = admission(meta)
            self.assertEqual(verdict, "reject", meta)
            self.assertIn('"priority"', reason, meta)


class Veto(unittest.TestCase):
    def test_listed_tenants_are_vetoed_with_their_name(self):
        denied = parse_config('{"tenants":["evil","worse"]}')
        self.assertEqual(
            decision('{"tenant":"evil"}', denied), ("veto", 'tenant "evil" is denied by policy')
        )
        self.assertEqual(decision('{"tenant":"worse","priority":3}', denied)[0], "veto")

    def test_everyone_else_is_granted(self):
        denied = parse_config('{"tenants":["evil"]}')
        for meta in ['{"tenant":"acme"}', "{}", '{"tenant":7}', '{"tenant":"Evil"}']:
            self.assertEqual(decision(meta, denied), ("grant", None), meta)


class Config(unittest.TestCase):
    def test_the_config_is_optional_but_must_be_well_formed(self):
        self.assertEqual(parse_config("{}"), frozenset())
        self.assertEqual(parse_config('{"tenants":[]}'), frozenset())
        for bad, message in [
            ('{"tenants":"evil"}', "tenants must be a list of strings"),
            ('{"tenants":["evil",1]}', "list of strings"),
            ('{"tenants":[],"typo":1}', 'unknown key "typo"'),
            ("[1]", "must be a table"),
        ]:
            with self.assertRaisesRegex(ValueError, message):
                parse_config(bad)


if __name__ == "__main__":
    unittest.main()
