"""Process definitions as files: the checks and their messages, and the BPMN 2.0 export checked
by an independent parser (SpiffWorkflow) and against the OMG BPMN 2.0 XSD it ships."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from lxml import etree

from process.bpmn import BPMN_NS, export_bpmn
from process.definition import DefinitionInvalid, load_definition, parse_definition

pytestmark = pytest.mark.nodb

DEMO = Path(__file__).resolve().parent.parent / "config" / "processes" / "moving-one-stop.yaml"
IDS = {"city-a": "http://a.example/metadata", "city-b": "http://b.example/metadata",
       "power": "http://p.example/metadata"}


def demo_data() -> dict:
    _, text = load_definition(DEMO, placeholders=IDS)
    return yaml.safe_load(text)


def parse(data: dict):
    return parse_definition(yaml.safe_dump(data, allow_unicode=True), source="t.yaml")


def test_the_demo_definition_is_valid():
    definition, _ = load_definition(DEMO, placeholders=IDS)
    assert definition.id == "moving-one-stop" and definition.owner.name.startswith("デジタル庁")
    assert definition.ancestors("power-notice") == {"resident-record"}


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.pop("owner"), "owner: Field required"),
    (lambda d: d["activities"][2].update(after=["nowhere"]), "after names an unknown activity nowhere"),
    (lambda d: d["activities"][0].update(after=["power-notice"]), "depends on itself"),
    (lambda d: d["activities"][2].update(after=[]), "must come before it"),
    (lambda d: d["activities"][1].update(id="resident-record"), "activity ids must be unique"),
    (lambda d: d["activities"][0].pop("service_type"), "a lookup names its service_type"),
    (lambda d: d["activities"][0].update(exchange="fax"), "activities.0.exchange"),
    (lambda d: d["activities"][0].update(surprise=1), "activities.0.surprise: Extra inputs are not permitted"),
    (lambda d: d["activities"][2]["when"][0].update(outcome="permitted"), "exactly one of"),
    (lambda d: d.update(version=0), "version: Input should be greater than or equal to 1"),
    (lambda d: d["trigger"].update(channels=[]), "names its channels"),
    (lambda d: d["activities"][0].update(task="x" * 129), "activities.0.task"),
    (lambda d: d.update(id="Bad Id"), "id: String should match pattern"),
    (lambda d: d["activities"][0].update(requester="{city-b}"),
     "the placeholder {city-b} was not filled in: give --set city-b=ENTITY_ID"),
    (lambda d: d["activities"][2].update(message_type=None), "a relay names its message_type"),
    (lambda d: d["activities"].append({**d["activities"][2], "id": "again"}),
     "each relay activity needs its own message_type"),
])
def test_a_broken_definition_is_refused_saying_where(change, message):
    data = demo_data()
    change(data)
    with pytest.raises(DefinitionInvalid) as caught:
        parse(data)
    assert message in str(caught.value)
    assert str(caught.value).startswith("t.yaml: ")


def test_not_yaml_and_not_a_mapping_are_refused():
    with pytest.raises(DefinitionInvalid, match="not YAML"):
        parse_definition("id: [", source="x")
    with pytest.raises(DefinitionInvalid, match="a definition is a mapping"):
        parse_definition("- 1", source="x")


def _xsd() -> etree.XMLSchema:
    import SpiffWorkflow

    path = Path(SpiffWorkflow.__file__).parent / "bpmn" / "parser" / "schema" / "BPMN20.xsd"
    return etree.XMLSchema(etree.parse(str(path)))


def test_the_bpmn_export_validates_against_the_bpmn_2_xsd():
    definition, _ = load_definition(DEMO, placeholders=IDS)
    xml = export_bpmn(definition)
    schema = _xsd()
    assert schema.validate(etree.fromstring(xml)), schema.error_log


def test_an_independent_bpmn_engine_reads_the_flow_as_defined():
    from SpiffWorkflow.bpmn.parser import BpmnParser
    from SpiffWorkflow.bpmn.parser.BpmnParser import BpmnValidator

    data = demo_data()
    # a join: something after both lookups
    data["activities"].append({**data["activities"][0], "id": "confirm", "name": "confirm",
                               "after": ["family-register-annex", "power-notice"]})
    definition = parse(data)
    parser = BpmnParser(validator=BpmnValidator())
    parser.add_bpmn_str(export_bpmn(definition))
    spec = parser.get_spec("Process_moving-one-stop")
    outputs = {name: sorted(o.name for o in t.outputs) for name, t in spec.task_specs.items()}
    # the trigger forks into the two independent lookups (parallel)
    assert outputs["Fork_moving-one-stop"] == ["Task_family-register-annex", "Task_resident-record"]
    # the branch: taken through the notice, not taken past it
    assert outputs["Branch_power-notice"] == ["Merge_power-notice", "Task_power-notice"]
    assert outputs["Task_resident-record"] == ["Branch_power-notice"]
    # the join before `confirm` waits for both paths
    assert type(spec.task_specs["Join_confirm"]).__name__ == "ParallelGateway"
    assert sorted(i.name for i in spec.task_specs["Join_confirm"].inputs) == ["Merge_power-notice",
                                                                            "Task_family-register-annex"]
    root = etree.fromstring(export_bpmn(definition))
    conditions = root.findall(f".//{{{BPMN_NS}}}conditionExpression")
    assert [c.text for c in conditions] == ["resident-record.転出先 (moving to) == デモB市"]


def test_export_bpmn_command_writes_the_file(tmp_path):
    from click.testing import CliRunner

    from renkei.cli import main

    out = tmp_path / "flow.bpmn"
    args = ["process", "export-bpmn", str(DEMO), "--out", str(out)]
    for key, value in IDS.items():
        args += ["--set", f"{key}={value}"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert _xsd().validate(etree.parse(str(out)))
    broken = tmp_path / "broken.yaml"
    broken.write_text(DEMO.read_text(encoding="utf-8").replace("version: 1", "version: zero"), encoding="utf-8")
    result = CliRunner().invoke(main, ["process", "validate", str(broken)])
    assert result.exit_code == 1 and "version: Input should be a valid integer" in result.output
