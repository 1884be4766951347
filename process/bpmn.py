"""Export a process definition to BPMN 2.0 XML (OMG formal/2011-01-03), for the modelling
tools process owners already use.

Mapping: the trigger is a start event; each activity a service task; an activity with `when`
sits between an exclusive split and merge (taken: through the task; not taken: the default
flow past it); activities with several successors fork through a parallel gateway, several
predecessors join through one; every last activity joins into the end event.
"""
from __future__ import annotations

from lxml import etree

from process.definition import ProcessDefinition, xml_id

BPMN_NS = "http://www.omg.org/spec/BPMN/20100524/MODEL"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
RENKEI_NS = "urn:renkei:process:2026"
TARGET_NS = "urn:renkei:process"


# tBaseElement then tFlowNode: documentation*, extensionElements?, incoming*, outgoing*
_BEFORE_INCOMING = {f"{{{BPMN_NS}}}{t}" for t in ("documentation", "extensionElements", "incoming")}
_BEFORE_OUTGOING = _BEFORE_INCOMING | {f"{{{BPMN_NS}}}outgoing"}


def _el(parent: etree._Element, tag: str, **attrs: str) -> etree._Element:
    return etree.SubElement(parent, f"{{{BPMN_NS}}}{tag}", {k: v for k, v in attrs.items() if v is not None})


class _Graph:
    def __init__(self, process: etree._Element):
        self.process = process
        self.flows: list[tuple[str, str, str | None, bool]] = []  # source, target, condition, default
        self.nodes: dict[str, etree._Element] = {}

    def node(self, tag: str, node_id: str, name: str | None = None) -> etree._Element:
        element = _el(self.process, tag, id=node_id, name=name)
        self.nodes[node_id] = element
        return element

    def flow(self, source: str, target: str, condition: str | None = None, default: bool = False) -> None:
        self.flows.append((source, target, condition, default))

    def write_flows(self) -> None:
        for n, (source, target, condition, default) in enumerate(self.flows, start=1):
            flow_id = f"Flow_{n}"
            # incoming/outgoing come before the other children in tFlowNode's sequence
            for node_id, tag in ((source, "outgoing"), (target, "incoming")):
                node = self.nodes[node_id]
                ref = etree.Element(f"{{{BPMN_NS}}}{tag}")
                ref.text = flow_id
                before = _BEFORE_INCOMING if tag == "incoming" else _BEFORE_OUTGOING
                position = sum(1 for c in node if c.tag in before)
                node.insert(position, ref)
            flow = _el(self.process, "sequenceFlow", id=flow_id, sourceRef=source, targetRef=target)
            if condition is not None:
                expr = _el(flow, "conditionExpression")
                expr.set(f"{{{XSI_NS}}}type", "bpmn:tFormalExpression")
                expr.set("language", RENKEI_NS)
                expr.text = condition
            if default:
                self.nodes[source].set("default", flow_id)


def export_bpmn(definition: ProcessDefinition) -> bytes:
    """The definition as a BPMN 2.0 `definitions` document (UTF-8 XML)."""
    root = etree.Element(f"{{{BPMN_NS}}}definitions", nsmap={"bpmn": BPMN_NS, "xsi": XSI_NS, "renkei": RENKEI_NS},
                         id=xml_id("Definitions", definition.id), targetNamespace=TARGET_NS,
                         exporter="renkei", exporterVersion="1")
    process = _el(root, "process", id=xml_id("Process", definition.id), name=definition.name, isExecutable="true")
    owner = _el(process, "documentation")
    owner.text = (f"process owner (プロセスオーナー): {definition.owner.name}; version {definition.version}; "
                  f"process type {definition.process_type}")
    g = _Graph(process)
    trigger = definition.trigger
    start_name = (f"application at {', '.join(trigger.channels)}" if trigger.kind == "application"
                  else f"life event: {trigger.event}")
    start = xml_id("Start", definition.id)
    g.node("startEvent", start, start_name)

    successors: dict[str, list[str]] = {a.id: [] for a in definition.activities}
    for a in definition.activities:
        for dep in a.after:
            successors[dep].append(a.id)

    entry: dict[str, str] = {}  # where a token enters an activity's block
    exit_: dict[str, str] = {}  # where it leaves
    for a in definition.activities:
        task_id = xml_id("Task", a.id)
        task = g.node("serviceTask", task_id, a.name)
        ext = _el(task, "extensionElements")
        etree.SubElement(ext, f"{{{RENKEI_NS}}}exchange", {
            "kind": a.exchange, "requester": a.requester, "provider": a.provider, "task": a.task,
            "infoType": a.info_type, **({"serviceType": a.service_type} if a.service_type else {}),
            **({"messageType": a.message_type} if a.message_type else {}),
        })
        task.set("implementation", "##WebService")
        entry[a.id] = exit_[a.id] = task_id
        if a.when:
            split, merge = xml_id("Branch", a.id), xml_id("Merge", a.id)
            g.node("exclusiveGateway", split, f"{a.name}?")
            g.node("exclusiveGateway", merge)
            g.flow(split, task_id, condition=" and ".join(c.describe() for c in a.when))
            g.flow(split, merge, default=True)
            g.flow(task_id, merge)
            entry[a.id], exit_[a.id] = split, merge
        if len(a.after) > 1:
            join = xml_id("Join", a.id)
            g.node("parallelGateway", join)
            g.flow(join, entry[a.id])
            entry[a.id] = join

    def fan_out(source: str, targets: list[str], fork_id: str) -> None:
        if len(targets) == 1:
            g.flow(source, targets[0])
            return
        g.node("parallelGateway", fork_id)
        g.flow(source, fork_id)
        for t in targets:
            g.flow(fork_id, t)

    roots = [entry[a.id] for a in definition.activities if not a.after]
    fan_out(start, roots, xml_id("Fork", definition.id))
    for a in definition.activities:
        if successors[a.id]:
            fan_out(exit_[a.id], [entry[s] for s in successors[a.id]], xml_id("Fork", a.id))
    sinks = [exit_[a.id] for a in definition.activities if not successors[a.id]]
    end = xml_id("End", definition.id)
    end_element = etree.Element(f"{{{BPMN_NS}}}endEvent", id=end, name="procedure done")
    if len(sinks) > 1:
        final = xml_id("Join", definition.id)
        g.node("parallelGateway", final)
        for s in sinks:
            g.flow(s, final)
        sinks = [final]
    process.append(end_element)
    g.nodes[end] = end_element
    g.flow(sinks[0], end)
    g.write_flows()
    # the flow elements first, then the sequence flows: tProcess takes flowElement in any order
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
