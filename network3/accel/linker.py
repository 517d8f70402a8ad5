"""accel/linker.py: how network3 hands a graph to Numba, for a short first run.

PyTensor's Numba linker turns the graph into one Python function that calls
one jitted function per node, then has Numba compile it.  For its on-disk
cache it wraps every node's function, and then the graph's function, in a
small cached function of its own, and Numba links each callee's code into
its caller and optimises the result again, at every level.

``GraphLinker`` compiles the graph's function once, and caches it on disk as
one entry (under PyTensor's compile directory), with the key PyTensor's own
dispatchers give each node.  Within a process, nodes with the same key share
one jitted function, so the accuracy functions of ``SGD`` reuse what the
training function compiled.  What a graph computes is not changed: the node
functions are PyTensor's (and kernels.py's), called in the same order.  The
price is a coarser disk cache: a graph that differs in one constant is
compiled afresh in a new process.

Numba also makes machine code for every function as soon as it is compiled,
each optimised with everything it calls, though only the graph's function is
ever called from Python.  So while it compiles a graph, ``GraphLinker``
gives Numba a code library (``LinkOnlyLibrary``) that links its callees'
code in but optimises it and makes machine code only when an address in it
is asked for: for the graph's function at once; for a node's function
(compiled with no entry point from Python), never.

This reaches into Numba's code libraries and compiler (private names that
may move): accel/__init__.py checks it before use.  docs/performance.md has
the compile times before and after, with their commands.
"""

import weakref
from contextlib import contextmanager
from hashlib import sha256

from numba.core.codegen import JITCodeLibrary, JITCPUCodegen
from numba.core.compiler_lock import global_compiler_lock
from numba.core.registry import cpu_target
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
        jitted = numba_njit(fn, final_function=True, cache=key is not None)
        # Numba compiles at the first call, in the dispatcher's
        # _compile_for_args, which its C code looks up on the instance
        compile_for_args = jitted._compile_for_args

        def compile_linking_only(*args, **kwargs):
            with link_only_libraries():
                return compile_for_args(*args, **kwargs)

        jitted._compile_for_args = compile_linking_only
        return jitted


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


#### Machine code for the graph's function only
class LinkOnlyLibrary(JITCodeLibrary):
    """A Numba code library that optimises its code and makes machine code
    only when an address in it is asked for.  Until then it is "finalized"
    for linking only: its callers link in its code, as Numba's libraries do,
    and optimise it with their own."""

    _pending = False  # finalized for linking, no machine code yet

    def finalize(self):
        # CPUCodeLibrary.finalize, less its last two steps, which are left
        # to make_machine_code: optimising, and adding to the JIT engine
        self._raise_if_finalized()
        for name in self._environment_names():
            _PENDING_ENVIRONMENTS[name] = self
        self._environments = {}
        for library in dict.fromkeys(self._linking_libraries):
            self._reload_init.update(library._reload_init)
            self._final_module.link_in(library._get_module_for_linking(), preserve=True)
        self._finalized = True
        self._pending = True

    def make_machine_code(self):
        with global_compiler_lock:
            if not self._pending:
                return
            self._pending = False
            self._optimize_final_module()
            self._final_module.verify()
            self._finalize_final_module()
            for name, env in self._environments.items():
                JITCPUCodegen.set_env(self._codegen, name, env)

    def get_pointer_to_function(self, name):
        self._ensure_finalized()
        if self._pending:
            if not self._defines(name):
                return 0  # as Numba answers: no such function here
            self.make_machine_code()
        return super().get_pointer_to_function(name)

    def serialize_using_object_code(self):
        self._ensure_finalized()
        self.make_machine_code()
        return super().serialize_using_object_code()

    def get_asm_str(self):
        self._ensure_finalized()
        self.make_machine_code()
        return super().get_asm_str()

    def _defines(self, name):
        return any(fn.name == name and not fn.is_declaration
                   for fn in self._final_module.functions)

    def _environment_names(self):
        # Numba's "environment" of each function this library compiled (a
        # global variable holding a pointer that Numba sets once the code is
        # in the JIT engine): the library's own, before its callees' are
        # linked in
        return [gv.name for gv in self._final_module.global_variables
                if gv.name.startswith("_ZN08NumbaEnv")]


# environment variable name -> the pending library that defines it
_PENDING_ENVIRONMENTS = weakref.WeakValueDictionary()


def _set_env(codegen, name, env):
    """JITCPUCodegen.set_env, kept for later when the variable's library has
    no machine code yet."""
    library = _PENDING_ENVIRONMENTS.get(name)
    if library is not None and library._pending:
        library._environments[name] = env
    else:
        JITCPUCodegen.set_env(codegen, name, env)


@contextmanager
def link_only_libraries():
    """Numba's CPU code libraries are LinkOnlyLibrary within this block (for
    this thread: it holds Numba's compiler lock)."""
    codegen = cpu_target.target_context.codegen()
    with global_compiler_lock:
        if "_library_class" in vars(codegen):  # already within the block
            yield
            return
        codegen._library_class = LinkOnlyLibrary
        codegen.set_env = lambda name, env: _set_env(codegen, name, env)
        try:
            yield
        finally:
            del codegen._library_class, codegen.set_env
