%% EUnit tests of examples/echo_drv.c in real erl. The drivers' directory is
%% in the environment variable EDRV_DRIVERS (see example_drivers_run).
-module(echo_drv_tests).
-include_lib("eunit/include/eunit.hrl").

%% How long a test waits for data: a bound for a broken build, never a
%% timing; and EUnit's bound for a whole test.
-define(TIMEOUT, 30000).
-define(TEST_BOUND_S, 60).

%% ---- helpers ----------------------------------------------------------------

open(Opts) ->
    Dir = os:getenv("EDRV_DRIVERS"),
    ?assertNotEqual(false, Dir),
    ok = erl_ddll:load_driver(Dir, "echo_drv"),
    open_port({spawn_driver, "echo_drv"}, Opts).

with(Opts, Fun) ->
    P = open(Opts),
    try
        Fun(P)
    after
        catch port_close(P)
    end.

data(P) ->
    receive
        {P, {data, D}} -> D
    after ?TIMEOUT ->
        error(no_data)
    end.

%% ---- tests ---------------------------------------------------------------------

%% Every test, each with a bound for a broken build (EUnit's own default is
%% 5 s a test, which a loaded machine or a sanitizer build can reach).
all_test_() ->
    [{Name, {timeout, ?TEST_BOUND_S, Fun}} || {Name, Fun} <- [
      {"echo_list_mode", fun echo_list_mode/0},
      {"echo_binary_mode", fun echo_binary_mode/0},
      {"control_upper_case", fun control_upper_case/0},
      {"control_count", fun control_count/0},
      {"control_unknown_op_is_badarg", fun control_unknown_op_is_badarg/0},
      {"ports_count_separately", fun ports_count_separately/0}
    ]].

echo_list_mode() ->
    with([], fun(P) ->
        true = port_command(P, "hello"),
        ?assertEqual("hello", data(P)),
        true = port_command(P, [<<"io">>, $l, ["ist"]]),
        ?assertEqual("iolist", data(P))
    end).

echo_binary_mode() ->
    with([binary], fun(P) ->
        true = port_command(P, <<"hello">>),
        ?assertEqual(<<"hello">>, data(P)),
        Big = binary:copy(<<"0123456789">>, 10000),
        true = port_command(P, Big),
        ?assertEqual(Big, data(P))
    end).

%% The port sets no control flags: control replies are lists in either mode.
control_upper_case() ->
    with([binary], fun(P) ->
        ?assertEqual("ABC1-Z", port_control(P, 1, <<"aBc1-z">>)),
        ?assertEqual("", port_control(P, 1, <<>>)),
        %% Longer than the 64-byte default reply buffer: the driver allocates.
        Long = lists:duplicate(1000, $q),
        ?assertEqual(lists:duplicate(1000, $Q), port_control(P, 1, Long))
    end).

control_count() ->
    with([], fun(P) ->
        ?assertEqual("0", port_control(P, 2, [])),
        true = port_command(P, "hello"),
        "hello" = data(P),
        true = port_command(P, <<"ab">>),
        "ab" = data(P),
        ?assertEqual("7", port_control(P, 2, [])),
        %% Controls are not echoed and do not count.
        "XY" = port_control(P, 1, "xy"),
        ?assertEqual("7", port_control(P, 2, []))
    end).

control_unknown_op_is_badarg() ->
    with([], fun(P) ->
        ?assertError(badarg, port_control(P, 99, "x")),
        ?assertError(badarg, port_control(P, 0, [])),
        %% The port survives.
        ?assertNotEqual(undefined, erlang:port_info(P)),
        true = port_command(P, "still here"),
        ?assertEqual("still here", data(P))
    end).

ports_count_separately() ->
    with([], fun(P1) ->
        with([], fun(P2) ->
            true = port_command(P1, "abc"),
            "abc" = data(P1),
            ?assertEqual("3", port_control(P1, 2, [])),
            ?assertEqual("0", port_control(P2, 2, []))
        end)
    end).
