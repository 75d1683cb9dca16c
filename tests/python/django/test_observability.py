"""Settings ``run_ptop`` applies for the user (Kafka security options, CommCare's checkpoint
delay override, background checkpoints, metrics and log output), and ``run_ptop --metrics-port``
scraped while it runs against the real services."""

from __future__ import annotations

import logging
import math
import re
import socket
import time
import urllib.request
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import CommandError
from django.test import override_settings
from pillowtop_rs.django import settings as pt_settings
from pillowtop_rs.django.management.commands.run_ptop import Command
from support import Project


def test_kafka_python_options_map_to_librdkafka_properties() -> None:
    assert pt_settings.kafka_options_config(
        {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_plain_username": "hq",
            "sasl_plain_password": "s3cret",
            "ssl_cafile": "/etc/kafka/ca.pem",
            "ssl_certfile": "/etc/kafka/client.pem",
            "ssl_keyfile": "/etc/kafka/client.key",
            "ssl_check_hostname": False,
            "api_version": (0, 10),
            "metadata_max_age_ms": 60000,
        }
    ) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "hq",
        "sasl.password": "s3cret",
        "ssl.ca.location": "/etc/kafka/ca.pem",
        "ssl.certificate.location": "/etc/kafka/client.pem",
        "ssl.key.location": "/etc/kafka/client.key",
        "ssl.endpoint.identification.algorithm": "none",
        "metadata.max.age.ms": "60000",
    }
    assert pt_settings.kafka_options_config({"ssl_check_hostname": True}) == {
        "ssl.endpoint.identification.algorithm": "https"
    }


def test_unknown_or_malformed_kafka_options_are_refused() -> None:
    with pytest.raises(
        ImproperlyConfigured, match=r"unknown kafka-python option\(s\) \['ssl_ca'\]"
    ):
        pt_settings.kafka_options_config({"ssl_ca": "/x"})
    with pytest.raises(ImproperlyConfigured, match="True or False"):
        pt_settings.kafka_options_config({"ssl_check_hostname": "yes"})
    with pytest.raises(ImproperlyConfigured, match="string, number or boolean"):
        pt_settings.kafka_options_config({"security_protocol": ["SSL"]})


def test_kafka_client_config_merges_raw_properties_and_logs_the_api_version_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pt_settings, "_api_version_logged", False)
    caplog.set_level(logging.INFO, logger="pillowtop_rs.django")
    ours = {
        "KAFKA_OPTIONS": {"security_protocol": "SSL", "ssl_cafile": "/ca"},
        "KAFKA_CONFIG": {"ssl.ca.location": "/other", "socket.keepalive.enable": True},
    }
    with override_settings(PILLOWTOP_RS=ours, KAFKA_API_VERSION=(0, 10)):
        assert pt_settings.kafka_client_config() == {
            "security.protocol": "SSL",
            "ssl.ca.location": "/other",
            "socket.keepalive.enable": "true",
        }
        pt_settings.kafka_client_config()
    said = [r for r in caplog.records if "KAFKA_API_VERSION" in r.getMessage()]
    assert len(said) == 1 and "ignored" in said[0].getMessage()
    with override_settings(PILLOWTOP_RS={"KAFKA_CONFIG": "security.protocol=SSL"}):
        with pytest.raises(ImproperlyConfigured, match="must be a dict"):
            pt_settings.kafka_client_config()


def test_checkpoint_delay_override_as_run_takes_it() -> None:
    with override_settings():
        from django.conf import settings

        if hasattr(settings, "PTOP_CHECKPOINT_DELAY_OVERRIDE"):
            del settings.PTOP_CHECKPOINT_DELAY_OVERRIDE
        assert pt_settings.checkpoint_delay_override() is None
    with override_settings(PTOP_CHECKPOINT_DELAY_OVERRIDE=None):
        assert pt_settings.checkpoint_delay_override() == math.inf
    with override_settings(PTOP_CHECKPOINT_DELAY_OVERRIDE=30):
        assert pt_settings.checkpoint_delay_override() == 30.0
    with override_settings(PTOP_CHECKPOINT_DELAY_OVERRIDE="30"):
        with pytest.raises(ImproperlyConfigured, match="PTOP_CHECKPOINT_DELAY_OVERRIDE"):
            pt_settings.checkpoint_delay_override()


def test_run_ptop_turns_settings_and_flags_into_run_keywords() -> None:
    ours = {
        "KAFKA_OPTIONS": {"security_protocol": "SSL"},
        "BACKGROUND_CHECKPOINTS": False,
        "METRICS_SINK": "testapp.fakes.RecordingMetricsSink",
        "METRICS_PORT": 9999,
        "LOG_OUTPUT": "both",
    }
    with override_settings(PILLOWTOP_RS=ours, PTOP_CHECKPOINT_DELAY_OVERRIDE=None):
        extra = Command.observability_options(
            {"background_checkpoints": None, "metrics_port": None}
        )
        assert extra["kafka_config"] == {"security.protocol": "SSL"}
        assert extra["max_checkpoint_delay"] == math.inf
        assert extra["background_checkpoints"] is False
        assert extra["metrics_port"] == 9999
        assert extra["log_output"] == "both"
        assert type(extra["metrics_sink"]).__name__ == "RecordingMetricsSink"
        # Flags win over settings.
        flags = Command.observability_options({"background_checkpoints": True, "metrics_port": 1})
        assert flags["background_checkpoints"] is True and flags["metrics_port"] == 1
    with override_settings(PILLOWTOP_RS={"METRICS_SINK": "testapp.fakes.NoSuchSink"}):
        with pytest.raises(CommandError, match="METRICS_SINK"):
            Command.observability_options({})
    with override_settings(PILLOWTOP_RS={"METRICS_SINK": "testapp.fakes.LegacyPillow"}):
        with pytest.raises(CommandError, match="counter"):
            Command.observability_options({})
    with override_settings(PILLOWTOP_RS={"LOG_OUTPUT": "syslog"}):
        with pytest.raises(CommandError, match="LOG_OUTPUT"):
            Command.observability_options({})
    with override_settings(PILLOWTOP_RS={"METRICS_PORT": "80"}):
        with pytest.raises(CommandError, match="METRICS_PORT"):
            Command.observability_options({})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _count(text: str, name: str) -> float:
    return sum(
        float(m.group(1))
        for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, flags=re.MULTILINE)
    )


def test_run_ptop_metrics_port_is_scraped_while_it_runs(project: Project, native: None) -> None:
    docs = [f"m-{i}" for i in range(60)]
    project.produce(docs)
    port = _free_port()
    proc = project.start(
        "run_ptop",
        "--pillow-name",
        "FormSubmissionMetadataTrackerPillow",
        "--until-idle",
        "--idle-timeout",
        "4",
        "--metrics-port",
        str(port),
    )
    scraped: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    text = r.read().decode()
            except OSError:
                time.sleep(0.1)
                continue
            # Recorded last for a chunk: every counter is settled once it shows them all.
            if _count(text, "commcare_change_feed_processing_time_count") >= len(docs):
                scraped["text"] = text
                break
            time.sleep(0.1)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
    assert "text" in scraped, f"never saw {len(docs)} changes on /metrics\nstderr:\n{err}"
    text = scraped["text"]
    assert _count(text, "commcare_change_feed_changes_count") == len(docs)
    assert _count(text, "commcare_change_feed_processing_time_count") == len(docs)
    assert 'pillow_name="FormSubmissionMetadataTrackerPillow"' in text
    assert "commcare_change_feed_processor_timing_count{" in text
