"""Foundation (issue 2): a real Nomad agent loads nomad-driver-elide, fingerprints it, rejects
a bad plugin config at start, re-logs the plugin's own log lines, and leaves no process
behind. Each test starts its own agent; the fixtures check for leftover processes."""

from __future__ import annotations

import json
import os
import re

import pytest

import nomad as nm


def drivers_table(cli_out: str) -> dict[str, list[str]]:
    """The `Drivers` section of `nomad node status -verbose`: {driver: [columns...]}."""
    rows, inside = {}, False
    for line in cli_out.splitlines():
        if line.strip() == "Drivers":
            inside = True
            continue
        if inside:
            if not line.strip():
                if rows:
                    break
                continue
            cols = re.split(r"\s{2,}", line.strip())
            if cols[0] != "Driver":
                rows[cols[0]] = cols
    return rows


def attributes(cli_out: str) -> dict[str, str]:
    out = {}
    for line in cli_out.splitlines():
        m = re.match(r"^(\S+)\s+=\s+(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def test_driver_detected_and_healthy(agent, standin_version):
    driver = agent.wait_driver_healthy()
    attrs = driver["Attributes"]
    assert driver["Detected"] is True and driver["Healthy"] is True, driver
    assert attrs.get("driver.elide.version") == standin_version, attrs
    assert os.path.realpath(attrs.get("driver.elide.path", "")) == os.path.realpath(nm.STANDIN), attrs

    # The operator's view through the CLI.
    out = agent.cli("node", "status", "-self", "-verbose").stdout
    assert re.search(r"^elide\s+true\s+true\s+Healthy\b", out, re.M), out
    table = drivers_table(out)
    assert table.get("elide", [])[:4] == ["elide", "true", "true", "Healthy"], out
    cli_attrs = attributes(out)
    assert cli_attrs.get("driver.elide.version") == standin_version, out
    plain = agent.cli("node", "status", "-self").stdout
    assert re.search(r"Driver Status\s*=.*\belide\b(?! \(unhealthy\))", plain), plain


def test_missing_elide_binary_is_not_detected(nomad_agent):
    missing = "/nonexistent/elide-e2e/bin/elide"
    agent = nomad_agent({"elide_binary": missing})
    driver = agent.wait_driver(lambda d: d.get("HealthDescription"))
    assert driver["Healthy"] is False, driver
    assert missing in driver["HealthDescription"], (
        f"the health description must name the configured path {missing}: {driver}")
    # Issue 2 asks for "not detected" (UNDETECTED) for a binary that is not there.
    assert driver["Detected"] is False, driver
    out = agent.cli("node", "status", "-self", "-verbose").stdout
    row = drivers_table(out).get("elide")
    assert row and row[1:3] == ["false", "false"], out


@pytest.mark.parametrize("key,value,who", [
    ("pids_limit", "lots", "rejected by Nomad's HCL decode: a number attribute given a string"),
    ("enabled", "maybe", "rejected by Nomad's HCL decode: a bool attribute given a word"),
    ("guest_env", "everything", "rejected by the plugin's own validation: not a known policy"),
])
def test_invalid_plugin_config_stops_agent_start(nomad_agent, key, value, who):
    agent = nomad_agent({key: value}, start=False)
    agent.start(wait=False)
    code = agent.wait_exit()
    log = agent.log()
    assert code != 0, f"the agent started with {key} = {value!r} ({who}):\n{agent.log_tail(60)}"
    error = log[log.find("Error starting agent"):] if "Error starting agent" in log else ""
    assert error, f"no 'Error starting agent' in the agent output:\n{agent.log_tail(60)}"
    assert key in error, (f"the agent's error does not name the field {key!r} ({who}):\n"
                          f"{error}")
    assert 'plugin "elide"' in error or nm.PLUGIN_NAME in error, error


def test_agent_log_has_plugin_log_lines_at_their_level(agent):
    agent.wait_driver_healthy()
    # The plugin logs "plugin configured" at INFO from SetConfig as hclog JSON on stderr;
    # go-plugin parses it and re-logs it under the plugin's logger name at that level.
    m = agent.wait_log(r"^.*\[INFO\]\s+(?:client\.driver_mgr|agent\.plugin_loader)\."
                       r"nomad-driver-elide: plugin configured.*$")
    line = m.group(0)
    long_lived = agent.wait_log(
        r"^.*\[INFO\]\s+client\.driver_mgr\.nomad-driver-elide: plugin configured:.*$").group(0)
    assert "driver=elide" in long_lived, long_lived
    # DEBUG lines keep their level too (e.g. "plugin serving").
    agent.wait_log(r"^.*\[DEBUG\]\s+client\.driver_mgr\.nomad-driver-elide: \S")
    wrong = [ln for ln in agent.plugin_log_lines()
             if "plugin configured" in ln and "[INFO]" not in ln]
    assert not wrong, "\n".join(wrong)
    # A line go-plugin could not parse is logged raw (with its JSON keys) at DEBUG.
    raw = [ln for ln in agent.plugin_log_lines() if '"@message"' in ln or '"@level"' in ln]
    assert not raw, "plugin log lines were not parsed by go-plugin:\n" + "\n".join(raw[:10])
    assert line


def test_agent_stop_leaves_no_process(agent):
    agent.wait_driver_healthy()
    plugins = agent.find_processes(nm.PLUGIN_NAME)
    assert plugins, ("no nomad-driver-elide process found under the running agent:\n"
                     + "\n".join(p.describe() for p in agent.processes()))
    code = agent.stop()
    assert code in (0, 1), agent.log_tail(40)
    left = agent.leftovers()
    assert not left, "\n".join(p.describe() for p in left)


def test_agent_without_plugin_starts(nomad_agent):
    """The harness itself: an agent with an empty plugin dir has no elide driver."""
    agent = nomad_agent(plugin=False)
    node = agent.node()
    assert "elide" not in (node.get("Drivers") or {}), json.dumps(node.get("Drivers"))[:500]


def test_persistent_agent_restarts_on_its_data_dir(nomad_agent, standin_version):
    agent = nomad_agent(mode="persistent")
    node_id = agent.node_id
    assert agent.wait_driver_healthy()["Attributes"]["driver.elide.version"] == standin_version
    agent.restart(graceful=True)
    assert agent.node_id == node_id
    agent.wait_driver_healthy()
    # A crash: the plugin outlives the agent and is reattached (or replaced) on start.
    agent.restart(graceful=False)
    assert agent.node_id == node_id
    agent.wait_driver_healthy()
