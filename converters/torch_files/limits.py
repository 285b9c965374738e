"""How much a checkpoint may make the reader do, in time and memory.

The modules import these by name: a test that lowers one patches the module that reads it.
"""

MAX_PICKLE_BYTES = 256 << 20  # data.pkl larger than this is refused
MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors spec's own limit
MAX_NESTING = 100
MAX_DIMS = 64  # numpy's limit
MAX_EXPANDED_BYTES = 256 << 20  # a tensor larger than its storage (stride 0) may make this much
# The tensors of one file may name at most MAX_VIEW_RATIO * file size + MAX_EXPANDED_BYTES bytes in
# all: views of one storage and stride-0 tensors each cost their full size when read.
MAX_VIEW_RATIO = 8
# Entries flatten_tensors may walk again through containers a pickle shares (memo references):
# a pickle of a few hundred bytes can reuse one list to describe 2**40 paths.
MAX_SHARED_VISITS = 100_000
MAX_NAME_CHARS = 64 << 20  # all tensor names of one flatten_tensors call together
# The functions a pickle calls (REDUCE) or sets state with (BUILD) may be passed at most
# MAX_ARGUMENT_RATIO * pickle size + MAX_ARGUMENT_BYTES bytes of arguments in all, each counted as
# what the call may make of it (_charge): memo references pass one large value to many calls at a
# few bytes each, and a call may copy it (torch.Size(x), a numpy array's data) or build a container
# of its items (list(x), set(x), dict(pairs)), counted as the bytes that container takes. The sets
# the pickle's opcodes make count too (216 bytes from a 1-byte EMPTY_SET). A protocol 2 pickle holds
# a set of ints in 3 to 5 bytes a member, and the set(list) call that builds it takes 30 to 53
# bytes a member (its table doubles as it grows) and 2 MiB at 19,661 members (a small set's table
# quadruples): these bounds take any set of up to 150,000 ints (frozenset, whose table is sized at
# once to twice its members, 65,000), and larger ones but where their table has just doubled. The
# full names of the globals a pickle names count too, as a stand-in class keeps its own: one
# 100 KB str passed 2,000 times to STACK_GLOBAL through memo references made 200 MB of names.
MAX_ARGUMENT_RATIO = 8
MAX_ARGUMENT_BYTES = 2 << 20
# The Python objects one pickle makes in all, counted as they are made: at most MAX_MADE_BYTES +
# MAX_MADE_RATIO * its input's size, that counted up to MAX_PICKLE_BYTES (so 3 GiB at most; the
# pickles of a legacy file share one budget). Single opcodes make far more than their own bytes
# (RSS, pickles of 2 to 8 MB): a memo entry (MEMOIZE) up to 119 bytes of one, an empty dict or
# list, or the list MARK starts, 72, a tuple of one item 56 of two, an int 40 of three; 256 MB of
# MEMOIZE would make 23 GB. Each opcode is charged, before it runs, the most it was measured to
# make, rounded up (unpickler._MADE: 1.1 to 3 times what tracemalloc counts), a value as long as
# its operand (str, bytes, long int) 5 bytes a byte of it, then what it took; what the calls'
# budget above counts is charged here too. Real checkpoints charge 24 to 74 bytes a byte of
# pickle (a tensor 4.4 to 4.6 KB: 13 MB for a state dict of 3,000, 283 MB for a training
# checkpoint of 100,000 optimizer entries in 5.7 MB of pickle), lists of ints or floats 10 to 12,
# vocabularies 23 to 34: this takes some 230,000 tensors, and lists of numbers up to 100 MB of
# pickle (ints of 256 to 65,535 charge 19 bytes a byte, other ints and floats 6 to 12).
MAX_MADE_BYTES = 1 << 30
MAX_MADE_RATIO = 8
# Keys of one dict (members of one set) with one hash value: a str or bytes hash is randomised per
# process, but an int's is itself mod 2**61 - 1 and a float's or a tuple's follows from its items',
# so a file can make any number collide, and then each insertion compares the key with all the
# colliding ones already there (quadratic: 15 s for a 350 KB pickle). Ints below 2**60 are their
# own hashes and not counted.
MAX_EQUAL_HASHES = 64
# Keys of distinct hashes can still be placed so that each insertion walks a long run of occupied
# slots: filling the dicts and sets of one pickle may take MAX_INSERT_SECONDS of CPU time plus
# MAX_INSERT_RATIO times the rest of its reading (plain keys take a fraction of it).
MAX_INSERT_SECONDS = 1.0
MAX_INSERT_RATIO = 4
_INT64_MAX = 2**63 - 1
