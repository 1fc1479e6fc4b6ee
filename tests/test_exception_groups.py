from callscribe.exception_groups import leaves


def test_leaves_are_the_failures_of_nested_groups_depth_first_in_order() -> None:
    first, second, third = ValueError("first"), KeyError("second"), OSError("third")
    group = BaseExceptionGroup("outer", [ExceptionGroup("inner", [first, second]), third])
    assert list(leaves(group)) == [first, second, third]


def test_an_exception_that_is_no_group_is_its_own_leaf() -> None:
    error = RuntimeError("alone")
    assert list(leaves(error)) == [error]
