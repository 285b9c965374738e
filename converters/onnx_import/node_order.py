"""A model's nodes in dependency order, as ONNX Runtime puts them when it loads a model.

The ONNX spec lists each node after the nodes whose outputs it reads; ONNX Runtime sorts the
main graph's nodes itself (Graph::Resolve), so models that break the rule run there. It refuses
an If branch or Loop body out of order; fastrnn sorts those too (their result is as well
defined). A node holding subgraphs (If branches, a Loop body, any graph attribute) also reads
what its subgraphs, at any depth, read from outside themselves.

Most models are in order: they come back as they are, not copied. Nothing here recurses, so
neither a long graph nor deeply nested subgraphs reach Python's recursion limit. A cycle is
refused here; what no order can mend (a value defined nowhere, or twice) is left for the
importer's structure check to refuse.
"""
from __future__ import annotations

import heapq
from typing import Any, NamedTuple

from fastrnn.errors import FormatError


class _Graph(NamedTuple):
    proto: Any  # GraphProto
    nodes: list  # its NodeProtos (read once: each read of proto.node makes new Python objects)
    parent: int  # index of the graph holding it in the list of graphs (-1: the main graph)
    holder: int  # index of the node holding it in that graph
    where: str  # what its nodes' names are prefixed with in messages ("" or "loop/body/")


def topologically_sorted(model):
    """The model itself when each of its graphs lists every node after the nodes it reads from;
    otherwise a copy whose graphs do, nodes that are ready together kept in the model's order."""
    orders = _node_orders(_graphs(model.graph))
    if all(order is None for order in orders):
        return model
    ordered = type(model)()
    ordered.CopyFrom(model)
    # subgraphs before the graphs holding them: reordering a graph copies its nodes, subgraphs too
    for graph, order in reversed(list(zip(_graphs(ordered.graph), orders))):
        if order is not None:
            _reorder(graph, order)
    return ordered


def _graphs(main) -> list[_Graph]:
    """The main graph and all its subgraphs, each after the graph holding it."""
    graphs = [_Graph(main, list(main.node), -1, -1, "")]
    for index, graph in enumerate(graphs):  # the loop reaches the graphs it appends
        for holder, node in enumerate(graph.nodes):
            for label, sub in _subgraphs(node):
                where = f"{graph.where}{node_name(node, holder)}/{label}/"
                graphs.append(_Graph(sub, list(sub.node), index, holder, where))
    return graphs


def _subgraphs(node):
    """(label, GraphProto) of each graph the node's attributes hold."""
    for attribute in node.attribute:
        if attribute.HasField("g"):
            yield attribute.name, attribute.g
        for index, graph in enumerate(attribute.graphs):
            yield f"{attribute.name}[{index}]", graph


def node_name(node, index: int) -> str:
    """The node's name in messages and plans: its own, or its op type and index in its graph."""
    return node.name or f"{node.op_type}_{index}"


def _node_orders(graphs: list[_Graph]) -> list[list[int] | None]:
    """For each graph, the order to list its nodes in, or None where they are in order; subgraphs
    first, so that each node holding some knows what they read from outside."""
    outer_reads: list[dict[int, list[str]]] = [{} for _ in graphs]  # node index -> names
    orders: list[list[int] | None] = [None] * len(graphs)
    for index in reversed(range(len(graphs))):
        graph = graphs[index]
        reads = [list(node.input) for node in graph.nodes]
        for holder, names in outer_reads[index].items():
            reads[holder].extend(names)
        orders[index] = _order(graph, reads)
        if graph.parent >= 0:
            outer_reads[graph.parent].setdefault(graph.holder, []).extend(
                _read_from_outside(graph, reads))
    return orders


def _defined_from_the_start(graph) -> set[str]:
    """The names the graph's inputs and initializers define."""
    return ({vi.name for vi in graph.input} | {t.name for t in graph.initializer}
            | {t.values.name for t in graph.sparse_initializer})


def _read_from_outside(graph: _Graph, reads: list[list[str]]) -> list[str]:
    """The names the graph's nodes (`reads`: their inputs and what their subgraphs read from
    outside) and outputs read which the graph does not define itself, in the order first read."""
    defined = _defined_from_the_start(graph.proto)
    defined.update(name for node in graph.nodes for name in node.output)
    defined.add("")  # an optional input left out
    read = [name for names in reads for name in names] + [vi.name for vi in graph.proto.output]
    return [name for name in dict.fromkeys(read) if name not in defined]


def _order(graph: _Graph, reads: list[list[str]]) -> list[int] | None:
    """The order to list the graph's nodes in, or None where they are in order (`reads`: the
    names each node reads, its subgraphs' included)."""
    producers = _producers(graph)
    if all(producers.get(name, -1) < index for index, names in enumerate(reads) for name in names):
        return None
    dependencies = _dependencies(reads, producers)
    order = _stable_topological_order(dependencies)
    if len(order) < len(dependencies):
        raise FormatError(_cycle_message(graph, dependencies, set(order)))
    return order


def _producers(graph: _Graph) -> dict[str, int]:
    """Value name -> index of the first node giving it, for the names that the graph's inputs and
    initializers do not define (a name defined twice is left for the structure check to refuse:
    its readers follow its first definition, as that check reads them)."""
    given = _defined_from_the_start(graph.proto)
    producers: dict[str, int] = {}
    for index, node in enumerate(graph.nodes):
        for name in node.output:
            if name and name not in given:
                producers.setdefault(name, index)
    return producers


def _dependencies(reads: list[list[str]], producers: dict[str, int]) -> list[dict[int, str]]:
    """For each node: the index of each node it reads from -> the first value it reads of it."""
    dependencies = []
    for names in reads:
        mine: dict[int, str] = {}
        for name in names:
            if name in producers:
                mine.setdefault(producers[name], name)
        dependencies.append(mine)
    return dependencies


def _stable_topological_order(dependencies: list[dict[int, str]]) -> list[int]:
    """Kahn's algorithm, always taking the ready node listed first; the nodes on a cycle, and
    those reading from them, are left out."""
    waiting = [len(d) for d in dependencies]
    readers: list[list[int]] = [[] for _ in dependencies]
    for index, producers in enumerate(dependencies):
        for producer in producers:
            readers[producer].append(index)
    ready = [index for index, count in enumerate(waiting) if count == 0]  # ascending: a heap
    order = []
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for reader in readers[index]:
            waiting[reader] -= 1
            if waiting[reader] == 0:
                heapq.heappush(ready, reader)
    return order


def _cycle_message(graph: _Graph, dependencies: list[dict[int, str]], placed: set[int]) -> str:
    """Name the nodes of one cycle among those the sort could not place: each of them reads from
    another one of them (else it would have been placed), so following those reads comes round."""
    node = next(index for index in range(len(dependencies)) if index not in placed)
    steps: list[tuple[int, str, int]] = []  # (reader, value, producer)
    position: dict[int, int] = {}
    while node not in position:
        position[node] = len(steps)
        producer = next(p for p in dependencies[node] if p not in placed)
        steps.append((node, dependencies[node][producer], producer))
        node = producer
    cycle = steps[position[node]:]
    reads = "; ".join(f"{_full_name(graph, reader)!r} reads {value!r} from "
                      f"{_full_name(graph, producer)!r}" for reader, value, producer in cycle)
    return (f"nodes {[_full_name(graph, reader) for reader, _, _ in cycle]} form a cycle "
            f"({reads}); the nodes of an ONNX graph cannot read, directly or through others, "
            f"their own outputs")


def _full_name(graph: _Graph, index: int) -> str:
    return graph.where + node_name(graph.nodes[index], index)


def _reorder(graph: _Graph, order: list[int]) -> None:
    del graph.proto.node[:]
    graph.proto.node.extend(graph.nodes[index] for index in order)
