#!/usr/bin/env escript
%%! -hidden
%% node_test.escript: edrv as an Erlang node, driven from a real BEAM.
%%
%% Usage: tests/node/run.sh node_test.escript EDRV DRIVERS_DIR ERL_DRIVERS_DIR EBIN [CASE...]
%% (this VM loads its copies of the drivers from ERL_DRIVERS_DIR: a
%% sanitizer build's drivers need the sanitizer's runtime, which erl has not)
%%
%% Starts its own epmd on 127.0.0.1 (a port of its own, so that it meets no
%% other epmd), edrv nodes (`EDRV --node ...`) and makes this escript a node
%% named on 127.0.0.1: no traffic leaves the loopback. Each case uses the
%% module edrv (EBIN) against the test drivers in DRIVERS_DIR, and where a
%% result is ERTS's own (an error of erl_ddll, a message a driver sends), the
%% same driver is run here in this VM and the two are compared.
%%
%% Nothing waits for a time: a state that comes at its own pace (a port
%% closed after its owner died on another node) is awaited by asking again
%% until it holds, up to 30 s (a bound for a broken build, not a timing).
-mode(compile).

-define(AWAIT_MS, 30000).
-define(COOKIE, edrv_test_cookie).

main([Edrv, Dir, ErlDir, Ebin | Only]) ->
    true = code:add_patha(Ebin),
    Epmd = start_epmd(),
    {ok, _} = net_kernel:start(['node_test@127.0.0.1', longnames]),
    erlang:set_cookie(node(), ?COOKIE),
    Env = #{edrv => Edrv, dir => Dir, erl_dir => ErlDir, epmd => Epmd, ebin => Ebin},
    Cases = [{load, fun load/1}, {ports, fun ports/1}, {calls, fun calls/1},
             {callers, fun callers/1}, {owner_exit, fun owner_exit/1},
             {port_exit_trap, fun port_exit_trap/1}, {port_exit_notrap, fun port_exit_notrap/1},
             {monitor, fun monitor/1}, {disconnect, fun disconnect/1}, {crash, fun crash/1},
             {cookie, fun cookie/1}, {two_nodes, fun two_nodes/1}, {many, fun many/1},
             {busy, fun busy/1}, {ticks, fun ticks/1}],
    Run = case Only of
              [] -> Cases;
              _ -> [lists:keyfind(list_to_atom(C), 1, Cases) || C <- Only]
          end,
    Failed = [C || {C, F} <- Run, not run_case(C, F, Env)],
    stop_epmd(Epmd),
    case Failed of
        [] -> io:format("node_test: ~b cases passed~n", [length(Run)]);
        _ -> io:format("node_test: FAILED: ~p~n", [Failed]), halt(1)
    end;
main(_) ->
    io:format("usage: tests/node/run.sh node_test.escript EDRV DRIVERS_DIR ERL_DRIVERS_DIR EBIN"
              " [CASE...]~n"),
    halt(2).

run_case(Case, F, Env) ->
    io:format("~p ...~n", [Case]),
    Self = self(),
    {Pid, Mref} = spawn_monitor(fun() -> Self ! {self(), case_result(F, Env), get(nodes)} end),
    receive
        {Pid, Result, Nodes} ->
            %% the nodes stop after the case: their ends may end it too
            [stop_node(K) || {_, K} <- Nodes],
            erlang:demonitor(Mref, [flush]),
            case Result of
                ok ->
                    io:format("~p ok~n", [Case]),
                    true;
                {failed, Class, Reason, Stack} ->
                    io:format("~p FAILED: ~p:~p~n  ~p~n", [Case, Class, Reason, Stack]),
                    false
            end;
        {'DOWN', Mref, _, _, Reason} ->
            io:format("~p FAILED: the case's process died: ~p~n", [Case, Reason]),
            false
    end.

case_result(F, Env) ->
    put(nodes, []),
    try F(Env)
    catch Class:Reason:Stack -> {failed, Class, Reason, Stack}
    end.

%% ---- epmd and edrv nodes --------------------------------------------------------

%% run.sh chose the port: erl reads ERL_EPMD_PORT when it starts.
start_epmd() ->
    Port = case os:getenv("ERL_EPMD_PORT") of
               false -> error("ERL_EPMD_PORT is not set: run this with tests/node/run.sh");
               P -> list_to_integer(P)
           end,
    "127.0.0.1" = os:getenv("ERL_EPMD_ADDRESS"),
    Epmd = os:find_executable("epmd"),
    %% its own epmd: started here, stopped (killed) at the end
    _ = os:cmd(Epmd ++ " -daemon -port " ++ integer_to_list(Port)),
    await(fun() ->
              case gen_tcp:connect({127,0,0,1}, Port, []) of
                  {ok, S} -> gen_tcp:close(S), true;
                  _ -> false
              end
          end),
    Port.

stop_epmd(Port) ->
    os:cmd(os:find_executable("epmd") ++ " -port " ++ integer_to_list(Port) ++ " -kill").

%% Starts `edrv --node Name@127.0.0.1`; returns the node's name once it
%% listens. A keeper process runs the command and keeps its output lines.
start_node(Env, Name, Opts) ->
    Cookie = proplists:get_value(cookie, Opts, atom_to_list(?COOKIE)),
    Node = list_to_atom(Name ++ "@127.0.0.1"),
    Args = ["--node", atom_to_list(Node), "--cookie", Cookie, "--listen", "127.0.0.1",
            "--drivers", maps:get(dir, Env)],
    Me = self(),
    K = spawn(fun() -> keeper(Me, maps:get(edrv, Env), Args) end),
    receive
        {K, listening} -> ok;
        {K, exited, S} -> error({node_did_not_start, Name, S})
    after ?AWAIT_MS -> error({node_did_not_start, Name})
    end,
    put(nodes, [{Node, K} | get(nodes)]),
    Node.

keeper(Parent, Edrv, Args) ->
    P = open_port({spawn_executable, Edrv},
                  [{args, Args}, {line, 1000}, stderr_to_stdout, exit_status, binary]),
    keeper_loop(Parent, P, [], running).

keeper_loop(Parent, P, Lines, State) ->
    receive
        {P, {data, {_, <<"edrv node ", _/binary>> = L}}} when State =:= running ->
            Parent ! {self(), listening},
            keeper_loop(Parent, P, [L | Lines], State);
        {P, {data, {_, L}}} ->
            keeper_loop(Parent, P, [L | Lines], State);
        {P, {exit_status, S}} ->
            Parent ! {self(), exited, S},
            keeper_loop(Parent, P, Lines, {exited, S});
        {From, lines} ->
            From ! {self(), lines, lists:reverse(Lines)},
            keeper_loop(Parent, P, Lines, State);
        {From, status} when State =/= running ->
            {exited, S} = State,
            From ! {self(), status, S},
            keeper_loop(Parent, P, Lines, State);
        {From, stop} ->
            case State of
                running ->
                    {os_pid, OsPid} = erlang:port_info(P, os_pid),
                    os:cmd("kill -TERM " ++ integer_to_list(OsPid)),
                    receive {P, {exit_status, _}} -> ok after ?AWAIT_MS -> ok end;
                _ -> ok
            end,
            From ! {self(), stopped}
    end.

ask(Node, Q) ->
    {Node, K} = lists:keyfind(Node, 1, get(nodes)),
    K ! {self(), Q},
    receive {K, Q, A} -> A after ?AWAIT_MS -> error({keeper_silent, Node, Q}) end.

%% The exit status of a node that is ending (after a crash, say).
node_status(Node) ->
    await(fun() -> {_, K} = lists:keyfind(Node, 1, get(nodes)),
                   K ! {self(), status},
                   receive {K, status, S} -> put(status, S), true after 5 -> false end
          end),
    get(status).

stop_node(K) ->
    K ! {self(), stop},
    receive {K, stopped} -> ok after ?AWAIT_MS -> ok end.

%% The node's output so far, as lines.
node_output(Node) ->
    ask(Node, lines).

await(F) -> await(F, erlang:monotonic_time(millisecond) + ?AWAIT_MS).

await(F, Deadline) ->
    case F() of
        true -> ok;
        _ ->
            case erlang:monotonic_time(millisecond) > Deadline of
                true -> error(await_timed_out);
                false -> receive after 5 -> await(F, Deadline) end
            end
    end.

recv() ->
    receive M -> M after ?AWAIT_MS -> error(no_message) end.

mailbox() ->
    receive M -> [M | mailbox()] after 0 -> [] end.

no_message() ->
    receive M -> error({unexpected_message, M}) after 0 -> ok end.

local_load(Env, Name) ->
    case erl_ddll:load_driver(maps:get(erl_dir, Env), Name) of
        ok -> ok;
        {error, already_loaded} -> ok;
        Error -> Error
    end.

%% ---- the cases ---------------------------------------------------------------

%% load_driver/3 and unload_driver/2 answer as erl_ddll does here.
load(Env) ->
    N = start_node(Env, "load", []),
    Dir = maps:get(dir, Env),
    ok = edrv:load_driver(N, Dir, "echo_drv"),
    ok = edrv:load_driver(N, Dir, echo_drv),
    ok = edrv:unload_driver(N, "echo_drv"),
    ok = edrv:unload_driver(N, "echo_drv"),
    {error, not_loaded} = edrv:unload_driver(N, "echo_drv"),
    {error, {not_allowed, _}} = edrv:load_driver(N, "/tmp", "echo_drv"),
    {error, {open_error, Text}} = edrv:load_driver(N, Dir, "nosuch_drv"),
    true = is_list(Text) andalso Text =/= "",
    ErlDir = maps:get(erl_dir, Env),
    {error, {open_error, _}} = erl_ddll:load_driver(ErlDir, "nosuch_drv"),
    %% the broken drivers fail as in ERTS
    [same({D, erl_ddll:load_driver(ErlDir, D)}, {D, edrv:load_driver(N, Dir, D)})
     || D <- ["ld_noinit", "ld_nullinit", "ld_initfail", "ld_badname", "ld_v1", "ld_v4",
              "ld_v34"]],
    {'EXIT', {badarg, _}} = (catch edrv:load_driver(N, Dir, 42)),
    pong = edrv:ping(N),
    ok.

%% open_port/3, port_command/2,3, port_control/3, port_close/1, port_info/1,2
%% with echo_drv and tdrv, each compared with the same driver here.
ports(Env) ->
    N = start_node(Env, "ports", []),
    Dir = maps:get(dir, Env),
    [ok = edrv:load_driver(N, Dir, D) || D <- ["echo_drv", "tdrv"]],
    [ok = local_load(Env, D) || D <- ["echo_drv", "tdrv"]],
    P = edrv:open_port(N, {spawn_driver, "echo_drv"}, [binary]),
    true = is_port(P) andalso node(P) =:= N,
    true = edrv:port_command(P, ["he", $l, [<<"l">>], <<"o">>]),
    {P, {data, <<"hello">>}} = recv(),
    true = edrv:port_command(P, <<"!">>, []),
    {P, {data, <<"!">>}} = recv(),
    "ABC" = edrv:port_control(P, 1, "abc"),
    "6" = edrv:port_control(P, 2, <<>>),
    {'EXIT', {badarg, _}} = (catch edrv:port_command(P, [foo])),
    Me = self(),
    [{name, "echo_drv"}, {links, [Me]}, {id, _}, {connected, Me}, {os_pid, undefined}] =
        edrv:port_info(P),
    {connected, Me} = edrv:port_info(P, connected),
    true = edrv:port_close(P),
    undefined = edrv:port_info(P),
    {'EXIT', {badarg, _}} = (catch edrv:port_control(P, 1, "x")),
    {'EXIT', {badarg, _}} = (catch edrv:port_close(P)),
    %% tdrv: replies and failures as in ERTS
    Ops = [{1, "abc"}, {1, <<"bin">>}, {4, ""}, {6, ""}, {5, ""}, {2, ""}, {1, "abc"}, {6, "b"},
           {3, ""}],
    Remote = edrv:open_port(N, {spawn_driver, "tdrv"}, []),
    Local = open_port({spawn_driver, "tdrv"}, []),
    [same({Op, catch_tag(fun() -> port_control(Local, Op, D) end)},
          {Op, catch_tag(fun() -> edrv:port_control(Remote, Op, D) end)}) || {Op, D} <- Ops],
    %% output of each kind, as messages
    Outputs = [{10, "out"}, {11, [2, $h, $d, $x, $y]}, {12, "abcdef"}, {13, [1, $a, $b, $c, $d]},
               {14, ""}],
    %% what a control outputs is in the mailbox when its reply is: the
    %% edrv node writes it to the connection before the reply
    [begin
         LR = catch_tag(fun() -> port_control(Local, Op, D) end),
         LM = [strip_port(Local, M) || M <- mailbox()],
         RR = catch_tag(fun() -> edrv:port_control(Remote, Op, D) end),
         same({Op, LR, LM}, {Op, RR, [strip_port(Remote, M) || M <- mailbox()]})
     end || {Op, D} <- Outputs],
    [same({Start, catch_tag(fun() -> open_port({spawn_driver, Start}, []) end)},
          {Start, catch_tag(fun() -> edrv:open_port(N, {spawn_driver, Start}, []) end)})
     || Start <- ["tdrv badarg", "tdrv errno", "tdrv general", "nosuch_drv"]],
    {'EXIT', {badarg, _}} = (catch edrv:open_port(N, {spawn_driver, "tdrv"}, [bogus])),
    true = edrv:port_close(Remote),
    port_close(Local),
    no_message(),
    ok.

same(X, X) -> ok;
same(A, B) -> error({differ, {local, A}, {edrv_node, B}}).

catch_tag(F) ->
    try F() of V -> {ok, V}
    catch error:R -> {error, R}
    end.

strip_port(Port, {Port, Data}) -> {port, Data};
strip_port(_, Other) -> error({unexpected_message, Other}).

%% port_call/3: terms, our own pid and port inside them, errors.
calls(Env) ->
    N = start_node(Env, "calls", []),
    ok = edrv:load_driver(N, maps:get(dir, Env), "tdrv"),
    P = edrv:open_port(N, {spawn_driver, "tdrv"}, []),
    Term = {a, [1, 2.5, "s"], <<"bin">>, self(), P, make_ref(), #{k => v}},
    Term = edrv:port_call(P, 1, Term),
    {'EXIT', {badarg, _}} = (catch edrv:port_call(P, 3, x)),
    %% any depth, as ERTS: a term and iodata nested 200 000 levels (the
    %% node walks them without recursion)
    Deep = lists:foldl(fun(_, A) -> [A] end, "x", lists:seq(1, 200000)),
    Deep = edrv:port_call(P, 1, Deep),
    true = edrv:port_command(P, Deep),
    {P, {data, "out:x"}} = recv(),
    true = edrv:port_command(P, [Deep, Deep], []),
    {P, {data, "out:xx"}} = recv(),
    "xx" = edrv:port_control(P, 1, [Deep | Deep]),
    true = edrv:port_close(P),
    {'EXIT', {badarg, _}} = (catch edrv:port_call(P, 1, x)),
    ok.

%% What the driver sees as its callers and owner is the BEAM process.
callers(Env) ->
    N = start_node(Env, "callers", []),
    ok = edrv:load_driver(N, maps:get(dir, Env), "tdrv"),
    P = edrv:open_port(N, {spawn_driver, "tdrv"}, []),
    Me = self(),
    _ = edrv:port_control(P, 40, ""),
    {callers, Me, Me, Me} = recv(),
    Other = spawn_link(fun() ->
                               _ = edrv:port_control(P, 32, ""),
                               Me ! {self(), recv()}
                       end),
    {Other, {hello, P}} = recv(),
    true = edrv:port_close(P),
    ok.

%% An owner's exit closes its ports.
owner_exit(Env) ->
    N = start_node(Env, "owner", []),
    ok = edrv:load_driver(N, maps:get(dir, Env), "echo_drv"),
    Me = self(),
    {Pid, Mref} = spawn_monitor(fun() ->
                                        Me ! {port, edrv:open_port(N, {spawn_driver, "echo_drv"}, [])},
                                        receive stop -> exit(shutdown) end
                                end),
    {port, P} = recv(),
    [_ | _] = edrv:port_info(P),
    Pid ! stop,
    {'DOWN', Mref, process, Pid, shutdown} = recv(),
    await(fun() -> edrv:port_info(P) =:= undefined end),
    ok.

%% A port that exits: a trapping owner gets {'EXIT', Port, Reason}, as here.
port_exit_trap(Env) ->
    N = start_node(Env, "trap", []),
    ok = edrv:load_driver(N, maps:get(dir, Env), "tdrv"),
    ok = local_load(Env, "tdrv"),
    process_flag(trap_exit, true),
    [begin
         L = open_port({spawn_driver, "tdrv"}, []),
         R = edrv:open_port(N, {spawn_driver, "tdrv"}, []),
         catch_tag(fun() -> port_control(L, Op, D) end),
         catch_tag(fun() -> edrv:port_control(R, Op, D) end),
         same(collect_exit(L), collect_exit(R))
     end || {Op, D} <- [{21, "boom"}, {21, "normal"}, {20, ""}, {22, [5]}, {25, ""}]],
    %% port_close: normal
    R2 = edrv:open_port(N, {spawn_driver, "tdrv"}, []),
    true = edrv:port_close(R2),
    {'EXIT', R2, normal} = recv(),
    no_message(),
    ok.

%% The messages of Port up to and with its exit, with the port stripped.
collect_exit(Port) ->
    case recv() of
        {'EXIT', Port, Reason} -> [{exit, Reason}];
        {Port, Data} -> [{data, Data} | collect_exit(Port)];
        Other -> error({unexpected_message, Other})
    end.

%% A port that exits with a reason other than normal ends an owner that does
%% not trap exits with that reason; normal leaves it alone.
port_exit_notrap(Env) ->
    N = start_node(Env, "notrap", []),
    ok = edrv:load_driver(N, maps:get(dir, Env), "tdrv"),
    Me = self(),
    Owner = fun(Atom) ->
                    spawn_monitor(fun() ->
                                          P = edrv:open_port(N, {spawn_driver, "tdrv"}, []),
                                          Me ! {self(), port, P},
                                          _ = edrv:port_control(P, 21, Atom),
                                          receive stop -> exit(survived) end
                                  end)
            end,
    {A, Ma} = Owner("boom"),
    {A, port, _} = recv(),
    {'DOWN', Ma, process, A, boom} = recv(),
    {K, Mk} = Owner("kill"),
    {K, port, _} = recv(),
    {'DOWN', Mk, process, K, kill} = recv(),
    {B, Mb} = Owner("normal"),
    {B, port, Pb} = recv(),
    await(fun() -> edrv:port_info(Pb) =:= undefined end),
    B ! stop,
    {'DOWN', Mb, process, B, survived} = recv(),
    ok.

%% driver_monitor_process on a BEAM process: process_exit runs when it dies.
monitor(Env) ->
    N = start_node(Env, "monitor", []),
    ok = edrv:load_driver(N, maps:get(dir, Env), "tdrv"),
    P = edrv:open_port(N, {spawn_driver, "tdrv"}, []),
    Me = self(),
    {W, Mw} = spawn_monitor(fun() ->
                                    Me ! {self(), edrv:port_control(P, 70, "")},
                                    receive stop -> ok end
                            end),
    {W, "0"} = recv(),
    W ! stop,
    {'DOWN', Mw, process, W, normal} = recv(),
    {process_exit, same} = recv(),
    true = edrv:port_close(P),
    ok.

%% The BEAM drops the connection: the edrv node closes the ports of the
%% processes of that node, as their owners are gone for it.
disconnect(Env) ->
    N = start_node(Env, "disc", []),
    ok = edrv:load_driver(N, maps:get(dir, Env), "echo_drv"),
    process_flag(trap_exit, true),
    P = edrv:open_port(N, {spawn_driver, "echo_drv"}, []),
    true = erlang:disconnect_node(N),
    {'EXIT', P, noconnection} = recv(),
    await(fun() -> edrv:port_info(P) =:= undefined end),
    ok.

%% A driver that crashes takes its edrv node down, not this VM: owners see
%% noconnection, as for any lost node.
crash(Env) ->
    N = start_node(Env, "crash", []),
    ok = edrv:load_driver(N, maps:get(dir, Env), "tdrv"),
    process_flag(trap_exit, true),
    Me = self(),
    P = edrv:open_port(N, {spawn_driver, "tdrv"}, []),
    {O, Mo} = spawn_monitor(fun() ->
                                    Q = edrv:open_port(N, {spawn_driver, "tdrv"}, []),
                                    Me ! {self(), Q},
                                    receive stop -> ok end
                            end),
    {O, _} = recv(),
    {'EXIT', {badarg, _}} = (catch edrv:port_control(P, 81, "")),
    %% selective: the node's keeper reports its exit too, in any order
    noconnection = receive {'EXIT', P, R1} -> R1 after ?AWAIT_MS -> error(no_exit) end,
    noconnection = receive {'DOWN', Mo, process, O, R2} -> R2 after ?AWAIT_MS -> error(no_down) end,
    Status = node_status(N),
    true = Status =/= 0,
    ok.

%% Busy ports suspend senders here as a local port does. This node learns
%% that the port is busy from the answer to the control that made it so;
%% another BEAM node (a peer), which did not see that answer, learns it from
%% its first command, which the port takes all the same (it could not be
%% stopped: it was sent), and waits from its next one on.
busy(Env) ->
    N = start_node(Env, "busy", []),
    ok = edrv:load_driver(N, maps:get(dir, Env), "tdrv"),
    P = edrv:open_port(N, {spawn_driver, "tdrv"}, []),
    [] = edrv:port_control(P, 74, [1]), % set_busy_port(1)
    false = edrv:port_command(P, "x", [nosuspend]),
    "ok" = edrv:port_control(P, 1, "ok"), % control is never blocked
    Me = self(),
    S = spawn_link(fun() -> Me ! {self(), edrv:port_command(P, "late")} end),
    await(fun() -> suspended_in_edrv(S) end),
    no_message(),
    [] = edrv:port_control(P, 74, [0]),
    {P, {data, "out:late"}} = recv(),
    {S, true} = recv(),
    %% many senders wait on one port, and all go on once it is free
    [] = edrv:port_control(P, 74, [1]),
    Ks = lists:seq(1, 50),
    Ss = [spawn_link(fun() -> Me ! {self(), edrv:port_command(P, integer_to_list(K))} end)
          || K <- Ks],
    await(fun() -> lists:all(fun suspended_in_edrv/1, Ss) end),
    no_message(),
    [] = edrv:port_control(P, 74, [0]),
    Got = [recv() || _ <- lists:seq(1, 2 * length(Ks))],
    Sent = lists:sort(["out:" ++ integer_to_list(K) || K <- Ks]),
    Sent = lists:sort([D || {Port, {data, D}} <- Got, Port =:= P]),
    true = lists:sort(Ss) =:= lists:sort([Pid || {Pid, true} <- Got]),
    %% a port_command/3 without options waits too, and fails when the port
    %% closes under it
    [] = edrv:port_control(P, 74, [1]),
    S2 = spawn(fun() -> Me ! {self(), catch edrv:port_command(P, "never", [])} end),
    await(fun() -> suspended_in_edrv(S2) end),
    true = edrv:port_close(P),
    {S2, {'EXIT', {badarg, _}}} = recv(),
    %% another node
    Q = edrv:open_port(N, {spawn_driver, "tdrv"}, []),
    [] = edrv:port_control(Q, 74, [1]),
    {ok, Peer, PN} = peer:start(#{name => busy_peer, host => "127.0.0.1", longnames => true,
                                  args => ["-hidden", "-setcookie", atom_to_list(?COOKIE),
                                           "-pa", maps:get(ebin, Env)]}),
    try
        true = erpc:call(PN, edrv, port_command, [Q, "first"]),
        {Q, {data, "out:first"}} = recv(),
        await(fun() -> erpc:call(PN, ets, member, [edrv_busy, Q]) end),
        %% (funs of this escript do not run there: erpc runs the call)
        spawn_link(fun() -> Me ! {peer, erpc:call(PN, edrv, port_command, [Q, "second"])} end),
        await(fun() -> peer_suspended(PN) end),
        no_message(),
        [] = edrv:port_control(Q, 74, [0]),
        %% in either order: the answer goes through the peer
        [{peer, true}, {Q, {data, "out:second"}}] = lists:sort([recv(), recv()]),
        %% and the peer learns it is free again
        await(fun() -> not erpc:call(PN, ets, member, [edrv_busy, Q]) end)
    after
        peer:stop(Peer)
    end,
    true = edrv:port_close(Q),
    ok.

%% Pid waits in edrv for the node's answer (a suspended port_command).
suspended_in_edrv(Pid) ->
    suspended_info(erlang:process_info(Pid, [status, current_function])).

suspended_info([{status, waiting}, {current_function, {edrv, call_connected, 3}}]) -> true;
suspended_info(_) -> false.

%% A process of node PN waits so.
peer_suspended(PN) ->
    lists:any(fun(Pid) ->
                      suspended_info(erpc:call(PN, erlang, process_info,
                                               [Pid, [status, current_function]]))
              end, erpc:call(PN, erlang, processes, [])).

%% An idle connection stays up: the node answers the BEAM's ticks (an
%% answer that is not an empty packet ends the connection at the first
%% tick). With net_ticktime 4 the BEAM ticks each second; the 10 s are the
%% idle time under test, not a wait for something to happen.
ticks(Env) ->
    Old = net_kernel:get_net_ticktime(),
    change_initiated = net_kernel:set_net_ticktime(4, 0),
    try
        N = start_node(Env, "ticks", []),
        pong = edrv:ping(N),
        monitor_node(N, true),
        receive {nodedown, N} -> error(tick_not_answered) after 10000 -> ok end,
        pong = edrv:ping(N),
        ok
    after
        net_kernel:set_net_ticktime(Old, 0)
    end.

%% A node with another cookie is refused, on both sides.
cookie(Env) ->
    N = start_node(Env, "cookie", [{cookie, "not_the_cookie"}]),
    pang = edrv:ping(N),
    pang = net_adm:ping(N),
    await(fun() ->
                  lists:any(fun(L) -> binary:match(L, <<"handshake">>) =/= nomatch end,
                            node_output(N))
          end),
    erlang:set_cookie(N, not_the_cookie),
    pong = edrv:ping(N),
    ok.

%% One BEAM, two edrv nodes: each port talks to its own.
two_nodes(Env) ->
    N1 = start_node(Env, "two_a", []),
    N2 = start_node(Env, "two_b", []),
    [ok = edrv:load_driver(N, maps:get(dir, Env), "echo_drv") || N <- [N1, N2]],
    P1 = edrv:open_port(N1, {spawn_driver, "echo_drv"}, [binary]),
    P2 = edrv:open_port(N2, {spawn_driver, "echo_drv"}, [binary]),
    true = node(P1) =/= node(P2),
    [edrv:port_command(P, atom_to_list(node(P))) || _ <- lists:seq(1, 10), P <- [P1, P2]],
    Got = [recv() || _ <- lists:seq(1, 20)],
    B1 = atom_to_binary(N1, utf8),
    B2 = atom_to_binary(N2, utf8),
    [{P1, {data, B1}}] = lists:usort([M || {Q, _} = M <- Got, Q =:= P1]),
    [{P2, {data, B2}}] = lists:usort([M || {Q, _} = M <- Got, Q =:= P2]),
    ok.

%% 100 processes, each with 100 ports of one node: every port answers its
%% owner, in order.
many(Env) ->
    N = start_node(Env, "many", []),
    ok = edrv:load_driver(N, maps:get(dir, Env), "echo_drv"),
    Me = self(),
    Pids = [spawn_link(fun() -> many_owner(N, Me) end) || _ <- lists:seq(1, 100)],
    [receive {P, done, 100} -> ok after ?AWAIT_MS -> error({no_answer, P}) end || P <- Pids],
    ok.

many_owner(N, Parent) ->
    Ports = [edrv:open_port(N, {spawn_driver, "echo_drv"}, [binary]) || _ <- lists:seq(1, 100)],
    [edrv:port_command(P, [<<"a">>, integer_to_list(I)]) || P <- Ports, I <- [1, 2]],
    Ok = length([P || P <- Ports,
                      receive {P, {data, <<"a1">>}} -> true after ?AWAIT_MS -> false end,
                      receive {P, {data, <<"a2">>}} -> true after ?AWAIT_MS -> false end]),
    [true = edrv:port_close(P) || P <- Ports],
    Parent ! {self(), done, Ok}.
