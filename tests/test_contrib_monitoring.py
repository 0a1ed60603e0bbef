"""contrib/prometheus.yml and nixforge-alerts.yml: valid YAML, and every series they use is one nixforge exports."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from nixforge.api.metrics import RegistryMetrics

CONTRIB = Path(__file__).resolve().parent.parent / "contrib"
GUIDE = CONTRIB.parent / "docs" / "operating.md"


class _State:
    builds_running = builds_queued = manifest_cache_hits = manifest_cache_misses = 0


class _Gc:
    class collector:  # noqa: N801 - the GcScheduler attribute it stands for
        max_size = 1 << 30

    runs = bytes_freed = store_bytes = store_blobs = 0


def exported() -> set[str]:
    text = RegistryMetrics(_State(), _Gc()).exposition().decode()
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def test_the_alert_rules_use_only_exported_series() -> None:
    rules = yaml.safe_load((CONTRIB / "nixforge-alerts.yml").read_text())["groups"][0]["rules"]
    names = {rule["alert"] for rule in rules}
    assert {"NixforgeBuildsFailing", "NixforgeStoreNearCap"} <= names
    series = exported()
    for rule in rules:
        used = set(re.findall(r"\bnixforge_[a-z_]+", rule["expr"]))
        assert used and used <= series, (rule["alert"], used - series)


def test_the_scrape_config_reads_metrics_and_loads_the_rules() -> None:
    config = yaml.safe_load((CONTRIB / "prometheus.yml").read_text())
    job = config["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics"
    assert config["rule_files"] == ["nixforge-alerts.yml"]


def test_the_operating_guide_shows_both_files_as_shipped() -> None:
    guide = GUIDE.read_text()
    for name in ("prometheus.yml", "nixforge-alerts.yml"):
        block = re.search(r"```yaml\n(# " + re.escape(name) + r":.*?)```", guide, re.S)
        assert block is not None, f"docs/operating.md shows no ```yaml block starting `# {name}:`"
        assert block.group(1) == (CONTRIB / name).read_text(), name
