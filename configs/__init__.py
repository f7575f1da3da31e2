"""One config per experiment, each with its sweep (`get_config(preset)`).

Run one by its path (`--config=configs/cpac_mnist.py`); configs that build
on another import it as a module of this package (`from configs import
cpac_mnist`), which the install (`pip install -e .`) makes importable from
any folder.
"""
