"""``pillowtop_rs.checkpoints``: CommCare's checkpoint-id naming (reference §1.5)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from pillowtop_rs import checkpoints as c


@dataclass
class IndexInfo:
    """CommCare's older ``ElasticsearchIndexInfo``."""

    index: str
    alias: str = ""


@dataclass
class Adapter:
    """CommCare's newer ES adapters."""

    index_name: str


def test_elasticsearch_pillow_checkpoint_is_pillow_id_dash_index() -> None:
    cp = c.get_checkpoint_for_elasticsearch_pillow(
        "UserPillow", "hqusers_2017-09-07", ["commcare-user"]
    )
    assert cp == c.KafkaPillowCheckpoint("UserPillow-hqusers_2017-09-07", ("commcare-user",))
    # The index as a string, an index_info (.index, not the alias) or an adapter: the same id.
    assert (
        c.get_checkpoint_for_elasticsearch_pillow(
            "UserPillow", IndexInfo("hqusers_2017-09-07", "hqusers")
        ).checkpoint_id
        == c.get_checkpoint_for_elasticsearch_pillow(
            "UserPillow", Adapter("hqusers_2017-09-07")
        ).checkpoint_id
        == "UserPillow-hqusers_2017-09-07"
    )
    ledger = c.get_checkpoint_for_elasticsearch_pillow(
        "LedgerToElasticsearchPillow", c.LEDGER_INDEX
    )
    assert ledger.checkpoint_id == "LedgerToElasticsearchPillow-ledgers_2016-03-15"


def test_xform_pillow_ids_match_the_reference_migration() -> None:
    # pillowtop/migrations/0007_copy_xforms_checkpoint.py copies the first to the second.
    old = c.xform_pillow_checkpoint_id(
        "xform-pillow",
        "xforms_2016-07-07",
        "hqusers_2017-09-07",
        report_xform_index="report_xforms_20160824_1708",
    )
    assert old == "xform-pillow-xforms_2016-07-07-report_xforms_20160824_1708-hqusers_2017-09-07"
    new = c.xform_pillow_checkpoint_id("xform-pillow", "xforms_2016-07-07", "hqusers_2017-09-07")
    assert new == "xform-pillow-xforms_2016-07-07-hqusers_2017-09-07"


def test_combined_pillows_and_plain_ids() -> None:
    assert (
        c.case_pillow_checkpoint_id(
            "case-pillow", "hqcases_2016-03-04", Adapter("case_search_2018-05-29")
        )
        == "case-pillow-hqcases_2016-03-04-case_search_2018-05-29-messaging-sync"
    )
    assert (
        c.group_pillow_checkpoint_id("group-pillow", "hqusers_2017-09-07", "hqgroups_2017-05-29")
        == "group-pillow-hqusers_2017-09-07-hqgroups_2017-05-29"
    )
    assert c.ucr_pillow_checkpoint_id("kafka-ucr-main") == "kafka-ucr-main"
    assert c.FORM_SUBMISSION_METADATA_TRACKER_CHECKPOINT_ID == "form-submission-metadata-tracker"


def test_bad_index_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        c.get_checkpoint_for_elasticsearch_pillow("p", "")
    with pytest.raises(TypeError, match="index name"):
        c.get_checkpoint_for_elasticsearch_pillow("p", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        c.ucr_pillow_checkpoint_id("")
