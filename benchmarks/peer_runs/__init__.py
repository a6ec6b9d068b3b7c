"""The side-by-side benchmark of learnq against the peer quantization libraries (issue 17, ``benchmarks/peers.py``).

``plan`` lists every row (library x method x setting), ``common`` the shared data, timing, training loop and artifact
inspection, ``side_<library>`` the runs of one library (learnq in ``.venv``, the peers in ``.venv-bench``),
``worker`` the subprocess entry point, ``render`` the tables (README.md block, BENCHMARKS.md section) from the JSON.
"""
