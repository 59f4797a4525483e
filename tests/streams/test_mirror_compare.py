"""How `compare` classifies each difference between the mirror and the customers table."""

from __future__ import annotations

from tagger.streams.customers_changelog import TableCustomer
from tagger.streams.mirror_tools import Difference, MirrorView, compare


def test_matching_mirror_has_no_differences() -> None:
    table = {"c1": TableCustomer(2, {"vip": 10})}
    view = MirrorView(hashes={"c1": {"vip": 10}}, members={"c1": {"vip": 10}}, seqs={"c1": 2})

    assert compare(table, view) == []


def test_tagless_customer_with_seq_key_matches() -> None:
    table = {"c1": TableCustomer(4, {})}
    view = MirrorView(seqs={"c1": 4})

    assert compare(table, view) == []


def test_seq_key_of_deleted_customer_matches() -> None:
    assert compare({}, MirrorView(seqs={"gone": 7})) == []


def test_compare_lists_each_kind() -> None:
    table = {
        "missing": TableCustomer(1, {"vip": 10}),
        "moved": TableCustomer(1, {"vip": 10}),
        "ahead": TableCustomer(1, {}),
    }
    view = MirrorView(
        hashes={"moved": {"vip": 11, "active": 3}},
        members={"moved": {"vip": 12, "active": 3}, "ghost": {"vip": 5}},
        seqs={"moved": 1, "ahead": 9},
    )

    differences = compare(table, view)

    assert Difference("missing_tag", "missing", "vip", 10, None) in differences
    assert Difference("missing_member", "missing", "vip", 10, None) in differences
    assert Difference("wrong_since", "moved", "vip", 10, 11) in differences
    assert Difference("wrong_member_since", "moved", "vip", 10, 12) in differences
    assert Difference("extra_tag", "moved", "active", None, 3) in differences
    assert Difference("stray_member", "ghost", "vip", None, 5) in differences
    assert Difference("seq_ahead", "ahead", None, 1, 9) in differences
    assert len(differences) == 7


def test_compare_limits_to_given_customers() -> None:
    table = {"a": TableCustomer(1, {"vip": 1}), "b": TableCustomer(1, {"vip": 1})}

    differences = compare(table, MirrorView(), customers=["b"])

    assert {d.customer_id for d in differences} == {"b"}
