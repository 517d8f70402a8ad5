"""linker.py: how network3 hands a graph to Numba, for a short first run.

PyTensor's Numba linker turns the graph into one Python function that calls
one jitted function per node, then has Numba compile it.  For its on-disk
cache it wraps every node's function, and then the graph's function, in a
small cached function of its own.  Numba links each callee's code into its
caller and optimises the result again, so that every node's code was
optimised and compiled to machine code once for the node, once for its
wrapper, and twice more for the graph's function and its wrapper.

``GraphLinker`` compiles the graph's function once, and caches it on disk as
one entry (under PyTensor's compile directory, as PyTensor does), with the
key PyTensor's own dispatchers give each node.  The node functions are not
wrapped or cached one by one; within a process, nodes with the same key
share one jitted function, so the accuracy functions of ``SGD`` reuse what
the training function compiled.  Measured on the benchmark's dbl_conv
network with an empty cache (scripts/benchmark.py's first call, 2 cores):
27.7 s with PyTensor's linker, 16.7 s with this one; with a warm cache,
1.5 s and 0.6 s.

What a graph computes is not changed: the node functions are PyTensor's
(and kernels.py's), called in the same order.  The price is a coarser disk
cache: a graph that differs in one constant (another ``lmbda``) is compiled
afresh in a new process, where PyTensor's linker would reuse the unchanged
nodes.
"""

from hashlib import sha256

from pytensor import config
from pytensor.graph.basic import Constant
from pytensor.link.numba.linker import NumbaLinker
from pytensor.link.utils import fgraph_to_python

# The node functions compiled in this process, by PyTensor's cache key and
# the node's types.
_NODE_FUNCTIONS = {}


class GraphLinker(NumbaLinker):
    """PyTensor's Numba linker, with one cached compilation per graph."""

    def fgraph_convert(self, fgraph, **kwargs):
        return graph_function(fgraph, **kwargs)

    def jit_compile(self, fn_and_key):
        from pytensor.link.numba.dispatch.basic import numba_njit

        fn, key = fn_and_key
        return numba_njit(fn, final_function=True, cache=key is not None)


def graph_function(fgraph, **kwargs):
    """The graph as a Python function calling a jitted function per node,
    and the graph's cache key (None when a node cannot be cached)."""
    # importing the dispatch package registers PyTensor's Numba functions
    from pytensor.link.numba.cache import compile_numba_function_src
    from pytensor.link.numba.dispatch import basic as dispatch

    # Where each variable comes from: (0, i) for the graph's i-th input,
    # (k, j) for the j-th output of the k-th node, (-1, key) for a constant.
    # The graph's key is made of the node keys with these, as PyTensor's is.
    nodes = fgraph.toposort()
    source = {v: (0, i) for i, v in enumerate(fgraph.inputs)}
    source |= {out: (k, j) for k, node in enumerate(nodes, start=1)
               for j, out in enumerate(node.outputs)}
    node_keys = []

    def node_function(op, node, **kwargs):
        fn, key = dispatch.numba_funcify_and_cache_key(op, node=node, **kwargs)
        if key is None:  # this node's function cannot be cached
            node_keys.append(None)
            return fn
        node_keys.append((tuple(source[v] for v in node.inputs), key))
        # PyTensor generates a node's function for its inputs' numbers of
        # dimensions, which its key leaves to Numba's signatures: shared
        # only between nodes of the same types
        types = tuple(v.type for v in node.inputs + node.outputs)
        return _NODE_FUNCTIONS.setdefault((key, types), fn)

    def constant(value, variable, **kwargs):
        if isinstance(variable, Constant):
            source[variable] = (-1, dispatch.cache_key_for_constant(value))
        return dispatch.numba_typify(value, variable=variable, **kwargs)

    fn = fgraph_to_python(fgraph, op_conversion_fn=node_function,
                          type_conversion_fn=constant,
                          fgraph_name="network3_graph", **kwargs)
    if None in node_keys:
        return fn, None
    outputs = tuple(source[v] for v in fgraph.outputs)
    key = sha256(
        f"network3 graph {tuple(node_keys)} {len(fgraph.inputs)} {outputs} "
        f"fastmath {int(config.numba__fastmath)}".encode()).hexdigest()
    # The same function again, from source with no file name: Numba names
    # the cache file after the source file, and fgraph_to_python writes the
    # source to a new temporary file every time.
    fn = compile_numba_function_src(fn.__source__, fn.__name__,
                                    global_env=fn.__globals__, cache_key=key)
    return fn, key
