from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from shenhe.models.policy import CATEGORY_SLUGS, SHIPPED_POLICY, PolicyError, load_policy, parse_policy


def _shipped() -> dict:
    return yaml.safe_load(SHIPPED_POLICY.read_text(encoding="utf-8"))


def test_shipped_policy_has_the_nine_article9_categories() -> None:
    pol = load_policy()
    assert pol.slugs == CATEGORY_SLUGS
    assert [c.id for c in pol.categories] == list(range(1, 10))
    assert pol.category("rumor").article_text == "散布谣言，扰乱社会秩序，破坏社会稳定的"
    assert pol.category("national_security").article_text == "危害国家安全，泄露国家秘密，颠覆国家政权，破坏国家统一的"
    for c in pol.categories:
        assert 0 <= c.review_threshold < c.block_threshold <= 1


def test_constitution_is_untrained_and_never_blocks() -> None:
    c = load_policy().category("constitution")
    assert c.trained is False
    assert c.can_block is False


def test_env_variable_overrides_shipped_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _shipped()
    data["version"] = "operator-7"
    data["categories"][7]["review_threshold"] = 0.2
    f = tmp_path / "mine.yaml"
    f.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    monkeypatch.setenv("SHENHE_POLICY", str(f))
    pol = load_policy()
    assert pol.version == "operator-7"
    assert pol.category("insult_defamation").review_threshold == 0.2


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["categories"][2].__setitem__("review_threshold", 0.95), "categories[2](national_honor): review_threshold"),
        (lambda d: d["categories"][0].__setitem__("slug", "treason"), "unknown category slug 'treason'"),
        (lambda d: d["categories"].pop(), "missing categories: other_illegal"),
        (lambda d: d["categories"][4].__setitem__("block_threshold", 1.5), "block_threshold"),
        (lambda d: d["categories"][4].pop("trained"), "trained"),
        (lambda d: d.pop("version"), "version"),
        (lambda d: d["categories"][1].__setitem__("colour", "red"), "colour"),
    ],
)
def test_malformed_policy_names_field_and_problem(mutate, expected: str) -> None:
    data = _shipped()
    mutate(data)
    with pytest.raises(PolicyError) as err:
        parse_policy(yaml.safe_dump(data, allow_unicode=True), source="bad.yaml")
    msg = str(err.value)
    assert expected in msg
    assert msg.startswith("bad.yaml: ")
    assert "\n" not in msg


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="not valid YAML at line"):
        parse_policy("version: [unclosed\n", source="x.yaml")
    with pytest.raises(PolicyError, match="not found"):
        load_policy(tmp_path / "nope.yaml")


def test_with_updates_roundtrips_through_yaml() -> None:
    pol = load_policy().with_updates({"rumor": {"review_threshold": 0.31, "block_threshold": 0.77, "auto_block": False}}, version="v2")
    again = parse_policy(pol.to_yaml())
    assert again.version == "v2"
    assert again.category("rumor").review_threshold == 0.31
    assert again.category("rumor").can_block is False
    assert again == pol


def _with_terms(slug: str, terms: list) -> str:
    data = _shipped()
    for c in data["categories"]:
        if c["slug"] == slug:
            c["terms"] = terms
    return yaml.safe_dump(data, allow_unicode=True)


def test_term_entries_plain_strings_and_mappings() -> None:
    pol = parse_policy(_with_terms("insult_defamation", [
        "傻逼", {"term": "某品牌", "action": "allow"},
        {"term": "炸药", "action": "block", "expires": "2027-01-01", "pinyin": False}]))
    plain, allow, block = pol.category("insult_defamation").terms
    assert (plain.term, plain.action, plain.pinyin, plain.split, plain.expires) == ("傻逼", None, True, True, None)
    assert allow.action == "allow"
    assert block.action == "block" and str(block.expires) == "2027-01-01" and block.pinyin is False
    from datetime import date
    assert not block.expired(date(2026, 12, 31)) and block.expired(date(2027, 1, 1))
    # Round trip: plain entries stay plain strings in the written YAML, options are kept.
    written = pol.to_yaml()
    assert "- 傻逼\n" in written
    assert parse_policy(written) == pol


@pytest.mark.parametrize(("entry", "expected"), [
    ({"term": "x", "action": "ban"}, "action"),
    ({"term": "  "}, "terms must be non-empty strings"),
    ({"term": "x", "expires": "soon"}, "expires"),
    ({"term": "x", "colour": "red"}, "colour"),
    ("", "terms must be non-empty strings"),
])
def test_bad_term_entry_is_named(entry: object, expected: str) -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy(_with_terms("rumor", [entry]), source="p.yaml")
    assert "rumor" in str(err.value) and "terms" in str(err.value) and expected in str(err.value)
