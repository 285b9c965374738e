"""Bidirectional layers among the unrolled chains: a forward and a backward chain over one input
as one fused node, so that the kernel runs both directions in one call (at once, one thread each,
where the Stack runs a layer's directions so).

onnx-free. torch's dynamo exporter writes a bidirectional nn.RNN layer as two chains over the same
X (the backward one reading a flipped projection of it), each joined by a Concat of its states,
and the two joined on the feature axis; tf2onnx writes a Keras Bidirectional layer built with
unroll=True so too. ``paired`` takes the chains ``unrolled_cells`` found and puts one UnrolledPair
node in the place of each such pair (and of the Concat that joins their states, which the pair's y
gives as it is).
"""
from __future__ import annotations

from .unrolled_layer import UnrolledPair


def paired(fused: list, users: dict, wanted: set, position: dict, op: str) -> list:
    """`fused` ((the fused node, the ids of the nodes it replaces, its place) per chain) with each
    forward chain and the first backward chain that reads the same X, of the same cell, size
    and length, as one entry, whose node (of op `op`) runs an UnrolledPair."""
    backward: dict[tuple, list] = {}
    for entry in fused:
        if entry[0].state.reverse:
            backward.setdefault(_pairing_key(entry[0]), []).append(entry)
    result, taken = [], set()
    for entry in fused:
        if entry[0].state.reverse:
            continue
        partners = [b for b in backward.get(_pairing_key(entry[0]), ()) if id(b) not in taken]
        if partners:
            taken.add(id(partners[0]))
            result.append(_pair(entry, partners[0], users, wanted, position, op))
        else:
            result.append(entry)
    return result + [entry for entry in fused if entry[0].state.reverse and id(entry) not in taken]


def _pairing_key(node) -> tuple:
    """What a forward and a backward chain must share to run as one two-direction layer."""
    layer = node.state
    params = layer.stack.layers[0][0]
    return (node.inputs[0], layer.mode, layer.n, layer.input_size, layer.hidden_size,
            str(layer.dtype), getattr(params, "linear_before_reset", None))


def _pair(forward: tuple, backward: tuple, users: dict, wanted: set, position: dict,
          op: str) -> tuple:
    from .plan import PlanNode

    (node_f, ids_f, place_f), (node_b, ids_b, place_b) = forward, backward
    inputs = list(node_f.inputs) + [name for name in node_b.inputs if name not in node_f.inputs]
    outputs_f, outputs_b = list(node_f.outputs), list(node_b.outputs)
    nodes = node_f.state.nodes + node_b.state.nodes
    ids, places = ids_f | ids_b, [place_f, place_b]
    concat = _joining_concat(node_f, node_b, users, wanted)
    joined = None
    if concat is not None:
        node, at_f, at_b = concat
        first = 0 if node.inputs[0] == outputs_f[at_f] else 1
        joined = (first, at_f, at_b, node.attrs.get("axis"))
        del outputs_f[at_f], outputs_b[at_b]
        nodes.append(node)
        ids = ids | {id(node)}
        places.append(position[id(node)])
    nodes.sort(key=lambda nd: position[id(nd)])
    outputs = outputs_f + outputs_b + ([concat[0].outputs[0]] if concat is not None else [])
    pair = UnrolledPair(nodes, node_f.state, node_b.state,
                        [inputs.index(name) for name in node_f.inputs],
                        [inputs.index(name) for name in node_b.inputs], joined)
    node = PlanNode(op, inputs, outputs, name=f"{node_f.name} + {node_b.name}")
    node.state = pair
    return node, ids, max(places)


def _joining_concat(node_f, node_b, users: dict, wanted: set):
    """(the Concat of the two chains' joined states on their last axis (for some rank of states
    the chains give), the index of those among each chain's outputs) where one joins them and
    nothing else reads them, else None."""
    at = []
    for node in (node_f, node_b):
        sources = node.state.sources
        ys = [k for k, source in enumerate(sources)
              if source[0] == "y" and not source[2] and not source[3]]
        if len(ys) != 1:
            return None
        at.append(ys[0])
    y_f, y_b = node_f.outputs[at[0]], node_b.outputs[at[1]]
    stacked_on = node_f.state.sources[at[0]][1]  # None: the states concatenated on axis 0
    if stacked_on != node_b.state.sources[at[1]][1] or y_f in wanted or y_b in wanted:
        return None
    readers_f, readers_b = users.get(y_f, []), users.get(y_b, [])
    if len(readers_f) != 1 or readers_f != readers_b:
        return None
    concat = readers_f[0]
    if concat.op != "Concat" or sorted(concat.inputs) != sorted([y_f, y_b]) or \
            not concat.outputs[0]:
        return None
    axis = concat.attrs.get("axis")
    ranks = {rank + (stacked_on is not None)
             for rank in node_f.state.state_ranks | node_b.state.state_ranks}
    if not any(axis in (-1, rank - 1) for rank in ranks):
        return None
    return concat, at[0], at[1]
