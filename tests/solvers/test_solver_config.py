import pytest

from solvers import GradMode, SolverConfig


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"method": "newton"}, "method"),
        ({"method": "torchdeq:newton"}, "method"),
        ({"tol": 0.0}, "tol"),
        ({"tol": -1e-3}, "tol"),
        ({"max_iter": 0}, "max_iter"),
        ({"memory": 0}, "memory"),
        ({"stop": "max"}, "stop"),
        ({"damping": 1.5}, "damping"),
    ],
)
def test_bad_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"SolverConfig\.{field}="):
        SolverConfig(**kwargs)


def test_unknown_method_lists_allowed_methods():
    with pytest.raises(ValueError) as err:
        SolverConfig(method="lbfgs")
    for name in ("broyden", "anderson", "picard", "torchdeq:anderson"):
        assert name in str(err.value)


def test_defaults_and_method_specific_memory():
    assert SolverConfig().window == 30
    assert SolverConfig(method="anderson").window == 6
    assert SolverConfig(method="anderson", memory=9).window == 9
    assert SolverConfig(method="torchdeq:broyden").is_peer


@pytest.mark.parametrize("spec", ["implicit", "phantom:5", "phantom:3:0.5", "unrolled:4"])
def test_grad_modes_parse(spec):
    mode = GradMode.parse(spec)
    assert mode.kind == spec.split(":")[0]


@pytest.mark.parametrize("spec", ["explicit", "phantom", "phantom:0", "phantom:2:1.5", "unrolled:x", "unrolled:1:2"])
def test_bad_grad_modes_are_rejected(spec):
    with pytest.raises(ValueError, match="allowed"):
        GradMode.parse(spec)
