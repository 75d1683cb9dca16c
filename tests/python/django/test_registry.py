"""The PILLOWTOPS registry (python/pillowtop_rs/registry.py): CommCare's shape, clear errors."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import override_settings
from pillowtop_rs import registry
from pillowtop_rs.exceptions import ConfigurationError, PillowNotFoundError
from testapp import fakes

FACTORY = {"name": "p1", "class": "testapp.fakes.LegacyPillow", "instance": "testapp.fakes.factory"}


def configs(pillowtops: Any, local: Any = None) -> list[registry.PillowConfig]:
    return registry.get_all_pillow_configs(pillowtops, local)


def test_string_entry_is_a_class_path_named_by_its_last_component() -> None:
    (config,) = configs({"fluff": ["testapp.fakes.LegacyPillow"]})
    assert (config.section, config.name, config.class_name) == (
        "fluff",
        "LegacyPillow",
        "testapp.fakes.LegacyPillow",
    )
    assert config.instance_generator is None
    pillow = config.get_instance()
    assert isinstance(pillow, fakes.LegacyPillow)


def test_dict_entry_calls_instance_with_name_and_params_overridden_by_runtime_options() -> None:
    params = {"ucr_division": "0f", "processor_chunk_size": 100, "nested": {"a": 1}}
    (config,) = configs({"core": [{**FACTORY, "params": params}]})
    fakes.CALLS.clear()
    result = config.get_instance(num_processes=4, process_num=2, processor_chunk_size=10)
    assert fakes.CALLS == [
        (
            "p1",
            {
                "ucr_division": "0f",
                "processor_chunk_size": 10,
                "nested": {"a": 1},
                "num_processes": 4,
                "process_num": 2,
            },
        )
    ]
    result["nested"]["a"] = 2  # params are deep-copied: the setting is untouched
    assert params["nested"] == {"a": 1}
    assert config.get_instance()["processor_chunk_size"] == 100


def test_dict_entry_without_instance_instantiates_the_class_and_name_defaults_to_class() -> None:
    (config,) = configs({"core": [{"class": "testapp.fakes.LegacyPillow"}]})
    assert config.name == "testapp.fakes.LegacyPillow"
    assert isinstance(config.get_instance(), fakes.LegacyPillow)


def test_class_is_imported_only_when_asked_for() -> None:
    entry = {**FACTORY, "class": "pillowtop.pillow.interface.ConstructedPillow"}
    (config,) = configs({"core": [entry]})
    assert config.get_instance()["name"] == "p1"
    with pytest.raises(ConfigurationError, match="entry 0 \\(p1\\): class .* cannot be imported"):
        config.get_class()


def test_local_pillowtops_are_appended_per_section_without_duplicates() -> None:
    local = {"core": [FACTORY, {**FACTORY, "name": "p2"}], "extra": ["testapp.fakes.LegacyPillow"]}
    got = [(c.section, c.name) for c in configs({"core": [FACTORY]}, local)]
    assert got == [("core", "p1"), ("core", "p2"), ("extra", "LegacyPillow")]


@pytest.mark.parametrize(
    ("pillowtops", "message"),
    [
        ({"core": [42]}, "section 'core' entry 0: expected a dotted path or a dict"),
        (
            {"core": [FACTORY, {"name": "x", "instance": "a.b"}]},
            "section 'core' entry 1: .*no 'class'",
        ),
        (
            {"core": [{**FACTORY, "parms": {}}]},
            "section 'core' entry 0: unknown key\\(s\\) \\['parms'\\]",
        ),
        ({"core": [{**FACTORY, "params": [1]}]}, "entry 0 \\(p1\\): 'params' must be a dict"),
        ({"core": [{**FACTORY, "instance": "nodots"}]}, "'instance' must be a dotted path"),
        ({"core": ["NoDots"]}, "entry 0: 'NoDots' is not a dotted path"),
        ({"core": FACTORY}, "section 'core' must be a list of pillows"),
        (["core"], "PILLOWTOPS must be a dict"),
        (
            {"a": [FACTORY], "b": [{**FACTORY, "params": {"x": 1}}]},
            "pillow name 'p1' is configured twice: PILLOWTOPS section 'a' entry 0 .* section 'b'",
        ),
    ],
)
def test_malformed_entries_name_the_section_and_entry(pillowtops: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        configs(pillowtops)


def test_unknown_pillow_lists_the_known_names() -> None:
    with pytest.raises(PillowNotFoundError) as e:
        registry.get_pillow_config_by_name(
            "nope", {"core": [FACTORY, "testapp.fakes.LegacyPillow"]}
        )
    assert str(e.value) == (
        "No pillow found with name nope. These are the names found:\n\tp1\n\tLegacyPillow"
    )
    assert isinstance(e.value, LookupError)


def test_unimportable_factory_and_rejected_options_are_configuration_errors() -> None:
    (missing,) = configs({"core": [{**FACTORY, "instance": "testapp.fakes.nothing"}]})
    with pytest.raises(ConfigurationError, match="entry 0 \\(p1\\): instance .* has no attribute"):
        missing.get_instance()
    (strict,) = configs({"core": [{**FACTORY, "instance": "testapp.fakes.strict_factory"}]})
    assert strict.get_instance()["topic"] == "form"
    with pytest.raises(ConfigurationError, match="cannot be called with .*\\['num_processes'\\]"):
        strict.get_instance(num_processes=2)


def test_reads_django_settings() -> None:
    with override_settings(
        PILLOWTOPS={"core": [FACTORY]}, LOCAL_PILLOWTOPS={"local": ["testapp.fakes.LegacyPillow"]}
    ):
        assert [c.name for c in registry.get_all_pillow_configs()] == ["p1", "LegacyPillow"]
        assert list(registry.get_pillow_configs_by_section()) == ["core", "local"]


def test_the_test_project_settings_parse() -> None:
    assert [(c.section, c.name) for c in registry.get_all_pillow_configs()] == [
        ("core", "xform-pillow"),
        ("core", "FormSubmissionMetadataTrackerPillow"),
        ("test", "failing-pillow"),
        ("test", "model-store-pillow"),
        ("test", "rust-es-pillow"),
    ]


def test_a_factory_must_return_a_pillow(native: None) -> None:
    (config,) = configs({"core": [{**FACTORY, "instance": "testapp.fakes.not_a_pillow"}]})
    with pytest.raises(
        ConfigurationError, match="returned builtins.str, not a pillowtop_rs.Pillow"
    ):
        registry.build_pillow(config)


def test_checkpoint_ids_follow_commcare_naming(native: None) -> None:
    xform = registry.get_pillow_by_name("xform-pillow", num_processes=1, process_num=0)
    assert xform.checkpoint_id == "xform-pillow-xforms_2016-07-07-hqusers_2017-09-07"
    assert xform.name == "xform-pillow"
    meta = registry.get_pillow_by_name("FormSubmissionMetadataTrackerPillow")
    assert meta.checkpoint_id == "form-submission-metadata-tracker"


def test_run_form_meta_pillow_decides_the_processors(native: None) -> None:
    with override_settings(RUN_FORM_META_PILLOW=True):
        names = [type(p).__name__ for p in registry.get_pillow_by_name("xform-pillow").processors]
        assert names == [
            "FormElasticProcessor",
            "FormSqlProcessor",
            "FormSubmissionMetadataTrackerProcessor",
        ]
    with override_settings(RUN_FORM_META_PILLOW=False):
        names = [type(p).__name__ for p in registry.get_pillow_by_name("xform-pillow").processors]
        assert names == ["FormElasticProcessor", "FormSqlProcessor"]


def test_a_class_path_that_does_not_exist_is_refused_when_the_pillow_is_built() -> None:
    typo = {"name": "p1", "class": "myapp.pillows.XFormPillow", "instance": "testapp.fakes.factory"}
    (config,) = configs({"core": [typo]})
    with pytest.raises(ConfigurationError, match="class 'myapp.pillows.XFormPillow' cannot be"):
        registry.build_pillow(config)
    # CommCare's own generic class is named by entries copied from CommCare: not refused for it.
    commcare = {**typo, "class": "pillowtop.pillow.interface.ConstructedPillow"}
    (config,) = configs({"core": [commcare]})
    with pytest.raises(ConfigurationError, match="not a pillowtop_rs.Pillow"):
        registry.build_pillow(config)  # the fake factory returns a dict: past the class check
