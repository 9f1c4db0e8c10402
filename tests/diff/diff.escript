#!/usr/bin/env escript
%%! +A 2 +S 1
%% diff.escript: runs one scenario in erl and in edrv and compares them.
%%
%% Usage: escript diff.escript DIFF_RUNNER DRIVERS_DIR [ERL_DRIVERS_DIR] SCENARIO
%% (erl loads the drivers from ERL_DRIVERS_DIR when it is given: a sanitizer
%% build's drivers need the sanitizer's runtime, which erl does not have).
%%
%% A scenario (read with file:consult/1) is a list of steps:
%%   {load, Name}  {unload, Name}  {open, Command, Opts}  {close, Idx}
%%   {command, Idx, Data}  {command, Idx, Data, Opts}
%%   {control, Idx, Op, Data}  {call, Idx, Op, Term}
%%   {sleep, Ms}  {msg_wait, Ms}
%%   {spawn, P}  {spawn_notrap, P}  {as, P, Step}  {async, P, Step}  {exit, P}
%%   {wait_exit, P}  {alive, P}  {adopt, Who}
%%   {expect, N | [{Who, N | result}], Step}  {await, Step, Want}
%% load and unload are erl_ddll:load_driver/2 and unload_driver/1 in erl
%% (unload_driver waits until the driver is really gone, i.e. until its async
%% jobs have ended; diff_runner waits the same way). command with Opts is
%% port_command/3 (nosuspend, force): false, for a busy port with nosuspend,
%% is {ok, false} on both sides. sleep waits Ms ms and gives {ok, ok}. Every
%% open step takes the next port index (1, 2, ...), failed or not. Each step
%% gives {ok, Value} or {error, Reason}, then the messages that arrive within
%% 50 ms of the step's end or of each other ({msg_wait, Ms} sets that time
%% from its own step on, and gives {ok, ok}). That wait only catches extra
%% messages: a message the step causes later (from a pool thread, a timer,
%% an fd) is waited for with expect, below. Here the steps run in a fresh
%% process that traps exits, the main process; diff_runner runs them in edrv.
%%
%% Several processes. {spawn, P} starts a helper named P (an atom, not
%% `self`; each name once): here a process that traps exits, in diff_runner
%% an edrv process with its own thread. {as, P, Step} runs Step in P and
%% waits for its result, which is the step's; Step is one of load, unload,
%% open (which takes the next port index as any open), close, command,
%% control, call and sleep. {async, P, Step} starts Step in P and gives
%% {ok, started} at once, for a port_command that waits on a busy port; not
%% an open. {exit, P} ends P (reason normal; edrv_proc_free in edrv) and
%% gives {ok, ok} once P is gone; P's ports close. A helper runs one step at
%% a time: as, async and exit need P idle (no async step of it unreported).
%% {spawn_notrap, P} starts a helper that does not trap exits (Erlang's
%% default): a port's exit with reason normal leaves it alone, any other
%% ends it. {wait_exit, P} waits (up to 30 s) until P has ended and gives
%% {ok, Reason}; {alive, P} gives {ok, true | false} now (a negative check:
%% an ending in flight is not waited for). A helper that has ended gives no
%% messages, and takes no more steps.
%% {adopt, Who} gives the next port index to the first port that came in a
%% message to Who (self or a helper) and has none yet, such as a port from
%% driver_create_port: {ok, Port}, or {error, no_port} (the index is taken
%% all the same).
%% A step's messages are, in this order: the main process's, collected as
%% above, where the end of an async step counts as an arrival; then, by
%% helper name, those of each helper not in an async step, as {P, Msg},
%% collected by all helpers at once with the same wait after the main
%% process's; then the results of the async steps that ended, as
%% {P, result, Result}, by name. A helper in an async step is not asked:
%% its messages come in the step its result comes in, after it.
%%
%% Ports become {port, K} (K by first appearance), the main process's pid
%% `self`, a helper's {pid, P}, other pids `pid`; then the two runs must be
%% equal step by step. Exit status 0 when they are. With DIFF_VERBOSE set,
%% the steps that match are printed too.
%%
%% Waiting for what is sure to come, not for a time. {expect, Spec, Step}
%% runs Step (any step) and then collects as above, except that it first
%% waits (up to 30 s: a bound for a broken build, not a timing) until what
%% Spec names has come; the usual wait then catches any extra message. Spec
%% is N (the main process's messages: as [{self, N}]) or a list of {self, N}
%% and {P, N} (N messages of helper P, which must be idle when the main
%% process's wait ends) and {P, result} (the end of P's async step). Use it
%% for every message that a pool thread, a timer, an fd event or another
%% process's exit sends: those come when they come, on a loaded machine
%% long after the step. {await, Step, Want} runs Step (a control or call)
%% again every 5 ms until its result is Want, e.g. {ok, "0"} or
%% {error, badarg} (up to 30 s), and gives the last result: for a state
%% that comes at its own pace, such as adrv's PENDING reaching 0. Plain
%% {sleep, Ms} steps are for what must NOT happen (a negative check: a
%% message that must not come, a timer that must not fire).
%%
%% A scenario must end with no port waiting for its driver queue to empty
%% (unload_driver kills such ports): erl's halt waits for them.
%%
%% The async pool: both sides have 2 pool threads (+A 2 above; diff_runner
%% starts edrv with async_threads = 2). erl runs one scheduler (+S 1), as
%% edrv has one emulator thread: ERTS queues a finished job for the scheduler
%% that submitted it, so with several schedulers the jobs of one lane that
%% were submitted from different schedulers (the scenario's process may move
%% between steps) could reach ready_async out of lane order, which is ERTS's
%% nondeterminism, not a difference. For ports of the async test driver
%% adrv (tests/drivers/adrv.c) two more things are normalized:
%%  - The job ids in control replies, which come from a counter that is
%%    global in each VM: SUBMIT's "Id,KeyAfter" becomes {submitted, KeyAfter}
%%    (KeyAfter, which ERTS sets to *key rem 2, must match), BLOCK's "Id"
%%    becomes blocked.
%%  - The {done, Key, Seq, InvokeOrder, Lane} messages. Jobs on different
%%    lanes (pool threads) end in any relative order, jobs on one lane in
%%    order. So within a step, the done messages are grouped by lane, the
%%    groups ordered by their smallest {Seq, Key, InvokeOrder}, each keeping
%%    its arrival order, and put back into the places that done messages took
%%    among the step's messages. Then each lane name becomes {lane, K}, K by
%%    first appearance in the scenario, so the pattern of keys to lanes must
%%    match but not the thread names. BLOCK jobs name no lane ([]): each of
%%    their messages is a group of its own, and [] stays.
%%    This keeps every per-lane (and so per-key) order of ready_async and
%%    drops only the interleaving of lanes. Scenarios must still avoid what
%%    is nondeterministic in itself: InvokeOrder counts invokes per key
%%    field, so jobs with no key (which alternate lanes by job id) should not
%%    share a key field with concurrently running jobs; and every message
%%    a step waits for must be named in an expect step, and a job that ends
%%    after its step's messages (a gated job released later) in an await.
-mode(compile).

-define(WAIT, 50).
%% expect and await: a bound for a broken build, never reached when it works.
-define(EXPECT_MS, 30000).
-define(AWAIT_POLL_MS, 5).
%% The harness's own messages between the main process and helpers.
-define(IS_DIFF(M), (is_tuple(M) andalso tuple_size(M) > 0 andalso element(1, M) =:= '$diff')).

main(["--node", Edrv, Ebin, Dir, ErlDir, Scenario]) ->
    {ok, Steps} = file:consult(Scenario),
    Name = filename:basename(Scenario, ".scenario"),
    Erl = normalize(Steps, run_erl(ErlDir, Steps)),
    Node = normalize(Steps, run_node(Edrv, Ebin, Dir, Steps)),
    compare(Name ++ " (edrv node)", Steps, Erl, Node);
main([Runner, Dir, Scenario]) ->
    main([Runner, Dir, Dir, Scenario]);
main([Runner, Dir, ErlDir, Scenario]) ->
    {ok, Steps} = file:consult(Scenario),
    Name = filename:basename(Scenario, ".scenario"),
    Erl = normalize(Steps, run_erl(ErlDir, Steps)),
    Edrv = normalize(Steps, run_edrv(Runner, Dir, Steps)),
    compare(Name, Steps, Erl, Edrv);
main(_) ->
    io:format("usage: diff.escript DIFF_RUNNER DRIVERS_DIR [ERL_DRIVERS_DIR] SCENARIO~n"
              "       tests/node/run.sh diff.escript --node EDRV EBIN DRIVERS_DIR ERL_DRIVERS_DIR"
              " SCENARIO~n"
              "  (erl loads the drivers from ERL_DRIVERS_DIR, by default DRIVERS_DIR)~n"),
    halt(2).

compare(Name, Steps, Erl, Edrv) ->
    Rows = lists:zip(lists:seq(1, length(Steps)), lists:zip3(Steps, Erl, Edrv)),
    Verbose = os:getenv("DIFF_VERBOSE") =/= false,
    [report(I, S, E, D, Verbose) || {I, {S, E, D}} <- Rows],
    Bad = [I || {I, {_, E, D}} <- Rows, E =/= D],
    case Bad of
        [] ->
            io:format("diff ~s: ~b steps match~n", [Name, length(Steps)]);
        _ ->
            io:format("diff ~s: ~b of ~b steps differ~n", [Name, length(Bad), length(Steps)]),
            halt(1)
    end.

report(I, S, E, E, true) -> io:format("step ~b: ~p~n  both: ~p~n", [I, S, E]);
report(_, _, E, E, false) -> ok;
report(I, S, E, D, _) -> io:format("step ~b: ~p~n  erl:  ~p~n  edrv: ~p~n", [I, S, E, D]).

%% ---- erl -------------------------------------------------------------------

%% The run's state: ports (index => port or no_port), next (the next port
%% index), helpers (name => #{pid, mon, state: idle | async | dead}) and seen
%% (who => the ports in the messages who got, in order of arrival).
run_erl(Dir, Steps) ->
    Parent = self(),
    {Pid, Mon} = spawn_monitor(
                   fun() ->
                           process_flag(trap_exit, true),
                           S0 = #{ports => #{}, next => 1, helpers => #{}, seen => #{}},
                           {Results, S} = run_steps(Dir, Steps, S0),
                           Helpers = maps:to_list(maps:get(helpers, S)),
                           Pids = [{P, Name} || {Name, #{pid := P}} <- Helpers],
                           Parent ! {self(), Pids, Results},
                           %% Helpers still blocked in a step die with the run.
                           [exit(P, kill) || {P, _} <- Pids]
                   end),
    receive
        {Pid, Pids, Results} ->
            erlang:demonitor(Mon, [flush]),
            {Pid, Pids, Results};
        {'DOWN', Mon, process, Pid, Reason} ->
            error({erl_run_failed, Reason})
    end.

run_steps(_Dir, [], S) ->
    {[], S};
run_steps(Dir, [Step | Rest], S) ->
    {Result, S1} = top_step(Dir, Step, S),
    {Msgs, S2} = collect_all(expected(Step), S1),
    S3 = case takes_index(Step) of
             true -> index_port(port_of(Result), S2);
             false -> S2
         end,
    {Results, S4} = run_steps(Dir, Rest, S3),
    {[{Result, Msgs} | Results], S4}.

%% The steps that take the next port index.
takes_index({open, _, _}) -> true;
takes_index({as, _, {open, _, _}}) -> true;
takes_index({adopt, _}) -> true;
takes_index({expect, _, Step}) -> takes_index(Step);
takes_index(_) -> false.

%% What an expect step waits for: [{self | P, N | result}].
expected({expect, N, Step}) when is_integer(N) ->
    expected({expect, [{self, N}], Step});
expected({expect, Spec, _}) when is_list(Spec) ->
    [error({bad_expect, E}) || E <- Spec, not is_expectation(E)],
    Spec;
expected({expect, Spec, _}) ->
    error({bad_expect, Spec});
expected(_) ->
    [].

is_expectation({Who, N}) when is_atom(Who), is_integer(N), N >= 0 -> true;
is_expectation({P, result}) when is_atom(P), P =/= self -> true;
is_expectation(_) -> false.

index_port(Port, #{ports := Ports, next := Next} = S) ->
    S#{ports := Ports#{Next => Port}, next := Next + 1}.

port_of({ok, Port}) -> Port;
port_of({error, _}) -> no_port.

%% The steps of the main process, which include running steps in helpers.
top_step(Dir, {Spawn, P}, #{helpers := Hs} = S)
  when Spawn =:= spawn orelse Spawn =:= spawn_notrap, is_atom(P), P =/= self ->
    not maps:is_key(P, Hs) orelse error({helper_exists, P}),
    Main = self(),
    Pid = spawn(fun() -> helper(Dir, P, Main, Spawn =:= spawn) end),
    %% A watcher tells the main process of the helper's end, as a message
    %% of the harness's own (a DOWN would count among the step's messages).
    spawn(fun() ->
                  Mon = monitor(process, Pid),
                  receive {'DOWN', Mon, process, Pid, R} -> Main ! {'$diff', P, down, R} end
          end),
    {{ok, ok}, S#{helpers := Hs#{P => #{pid => Pid, state => idle}}}};
top_step(_, {wait_exit, P}, #{helpers := Hs} = S) ->
    #{P := H} = Hs,
    receive {'$diff', P, down, R} -> {{ok, R}, S#{helpers := Hs#{P := H#{state := dead}}}}
    after ?EXPECT_MS -> {{error, timeout}, S}
    end;
top_step(_, {alive, P}, #{helpers := Hs} = S) ->
    #{P := #{pid := Pid}} = Hs,
    {{ok, is_process_alive(Pid)}, S};
top_step(_, {as, P, Step}, #{ports := Ports} = S) ->
    #{pid := Pid} = idle_helper(P, Step, S),
    Pid ! {'$diff', {run, helper_step(Step), Ports}},
    receive {'$diff', P, result, R} -> {R, S} end;
top_step(_, {async, P, Step}, #{ports := Ports, helpers := Hs} = S) ->
    takes_index(Step) andalso error({async_cannot_open, Step}),
    #{pid := Pid} = H = idle_helper(P, Step, S),
    Pid ! {'$diff', {async, helper_step(Step), Ports}},
    {{ok, started}, S#{helpers := Hs#{P := H#{state := async}}}};
top_step(_, {exit, P}, #{helpers := Hs} = S) ->
    #{pid := Pid} = H = idle_helper(P, exit, S),
    Pid ! {'$diff', exit},
    receive {'$diff', P, down, _} -> ok end,
    {{ok, ok}, S#{helpers := Hs#{P := H#{state := dead}}}};
top_step(_, {adopt, Who}, #{ports := Ports, seen := Seen} = S) ->
    Indexed = maps:values(Ports),
    case [Port || Port <- maps:get(Who, Seen, []), not lists:member(Port, Indexed)] of
        [Port | _] -> {{ok, Port}, S};
        [] -> {{error, no_port}, S}
    end;
top_step(Dir, {expect, _, Step}, S) ->
    top_step(Dir, Step, S);
top_step(Dir, {await, Step, Want}, #{ports := Ports} = S) ->
    is_await_step(Step) orelse error({not_an_await_step, Step}),
    {await(Dir, Step, Want, Ports, now_ms() + ?EXPECT_MS), S};
top_step(Dir, Step, #{ports := Ports} = S) ->
    {run(Dir, Step, Ports), S}.

is_await_step({control, _, _, _}) -> true;
is_await_step({call, _, _, _}) -> true;
is_await_step(_) -> false.

%% Runs Step until it gives Want, or the bound has passed: the last result.
await(Dir, Step, Want, Ports, Deadline) ->
    case run(Dir, Step, Ports) of
        Want ->
            Want;
        R ->
            case now_ms() >= Deadline of
                true -> R;
                false -> timer:sleep(?AWAIT_POLL_MS), await(Dir, Step, Want, Ports, Deadline)
            end
    end.

now_ms() -> erlang:monotonic_time(millisecond).

idle_helper(P, Step, #{helpers := Hs}) ->
    case Hs of
        #{P := #{state := idle} = H} -> H;
        _ -> error({helper_not_idle, P, Step})
    end.

%% A helper process: runs steps sent to it, keeps the other messages it gets
%% until asked for them, and ends (reason normal) when told to.
helper(Dir, Name, Main, Trap) ->
    process_flag(trap_exit, Trap),
    helper_loop(Dir, Name, Main).

helper_loop(Dir, Name, Main) ->
    receive
        {'$diff', {run, Step, Ports}} ->
            Main ! {'$diff', Name, result, run(Dir, Step, Ports)},
            helper_loop(Dir, Name, Main);
        {'$diff', {async, Step, Ports}} ->
            Main ! {'$diff', Name, async_result, run(Dir, Step, Ports)},
            helper_loop(Dir, Name, Main);
        {'$diff', {collect, Wait, N, Deadline}} ->
            Main ! {'$diff', Name, msgs, collect(Wait, N, Deadline)},
            helper_loop(Dir, Name, Main);
        {'$diff', exit} ->
            ok
    end.

%% The steps a helper may run (checked in the main process: an error there
%% ends the run).
helper_step({Op, _} = S) when Op =:= load; Op =:= unload; Op =:= close; Op =:= sleep -> S;
helper_step({Op, _, _} = S) when Op =:= open; Op =:= command -> S;
helper_step({Op, _, _, _} = S) when Op =:= control; Op =:= call; Op =:= command -> S;
helper_step(S) -> error({not_a_helper_step, S}).

run(Dir, Step, Ports) ->
    try step(Dir, Step, Ports) catch error:R -> {error, R} end.

step({node, N, Dir}, Step, Ports) ->
    node_step(N, Dir, Step, Ports);
step(Dir, {load, Name}, _) ->
    case erl_ddll:load_driver(Dir, Name) of
        ok -> {ok, ok};
        {error, {open_error, _}} -> {error, open_error};
        {error, R} -> {error, R}
    end;
step(_, {unload, Name}, _) ->
    case erl_ddll:unload_driver(Name) of
        ok -> {ok, ok};
        {error, R} -> {error, R}
    end;
step(_, {open, Command, Opts}, _) ->
    {ok, open_port({spawn_driver, Command}, Opts)};
step(_, {close, I}, Ports) ->
    {ok, port_close(port(I, Ports))};
step(_, {command, I, Data}, Ports) ->
    {ok, port_command(port(I, Ports), Data)};
step(_, {command, I, Data, Opts}, Ports) ->
    {ok, port_command(port(I, Ports), Data, Opts)};
step(_, {control, I, Op, Data}, Ports) ->
    {ok, port_control(port(I, Ports), Op, Data)};
step(_, {call, I, Op, Term}, Ports) ->
    {ok, erlang:port_call(port(I, Ports), Op, Term)};
step(_, {sleep, Ms}, _) ->
    timer:sleep(Ms),
    {ok, ok};
step(_, {msg_wait, Ms}, _) when is_integer(Ms), Ms > 0 ->
    put(msg_wait, Ms), % this step's messages too, as in diff_runner
    {ok, ok}.

port(I, Ports) -> maps:get(I, Ports, no_port).

%% The same steps against an edrv node, with the module edrv. A step on a
%% port index that has no port (a failed open) is badarg, as in erl.
node_step(N, Dir, {load, Name}, _) ->
    case edrv:load_driver(N, Dir, Name) of
        ok -> {ok, ok};
        {error, {open_error, _}} -> {error, open_error};
        {error, R} -> {error, R}
    end;
node_step(N, _, {unload, Name}, _) ->
    case edrv:unload_driver(N, Name) of
        ok -> {ok, ok};
        {error, R} -> {error, R}
    end;
node_step(N, _, {open, Command, Opts}, _) ->
    {ok, edrv:open_port(N, {spawn_driver, Command}, Opts)};
node_step(_, _, {close, I}, Ports) ->
    {ok, edrv:port_close(node_port(I, Ports))};
node_step(_, _, {command, I, Data}, Ports) ->
    {ok, edrv:port_command(node_port(I, Ports), Data)};
node_step(_, _, {command, I, Data, Opts}, Ports) ->
    {ok, edrv:port_command(node_port(I, Ports), Data, Opts)};
node_step(_, _, {control, I, Op, Data}, Ports) ->
    {ok, edrv:port_control(node_port(I, Ports), Op, Data)};
node_step(_, _, {call, I, Op, Term}, Ports) ->
    {ok, edrv:port_call(node_port(I, Ports), Op, Term)};
node_step(_, Dir, Step, Ports) ->
    step(Dir, Step, Ports).

node_port(I, Ports) ->
    case port(I, Ports) of
        no_port -> error(badarg);
        P -> P
    end.

%% ---- an edrv node ------------------------------------------------------------

%% The steps run here as in erl, against an edrv node with the drivers of
%% Dir and 2 pool threads (as +A 2 above). tests/node/run.sh chose the epmd
%% port (ERL_EPMD_PORT); this starts that epmd and stops it at the end.
run_node(Edrv, Ebin, Dir, Steps) ->
    true = code:add_patha(Ebin),
    Port = list_to_integer(os:getenv("ERL_EPMD_PORT")),
    Epmd = os:find_executable("epmd"),
    _ = os:cmd(Epmd ++ " -daemon -port " ++ integer_to_list(Port)),
    ok = await_epmd(Port, now_ms() + ?EXPECT_MS),
    {ok, _} = net_kernel:start(['diff@127.0.0.1', longnames]),
    Cookie = atom_to_list(erlang:get_cookie()),
    Node = 'diff_edrv@127.0.0.1',
    Os = open_port({spawn_executable, Edrv},
                   [{args, ["--node", atom_to_list(Node), "--cookie", Cookie, "--listen",
                            "127.0.0.1", "--drivers", Dir, "-A", "2"]},
                    {line, 1000}, stderr_to_stdout, exit_status, binary]),
    receive
        {Os, {data, {eol, <<"edrv node ", _/binary>>}}} -> ok;
        {Os, {exit_status, St}} -> error({edrv_node_did_not_start, St})
    after ?EXPECT_MS -> error(edrv_node_did_not_start)
    end,
    %% the node's other lines (connections) are dropped by a drain process
    Drain = spawn(fun() -> drain(Os) end),
    erlang:port_connect(Os, Drain),
    unlink(Os),
    try run_erl({node, Node, Dir}, Steps)
    after
        Drain ! stop,
        os:cmd(Epmd ++ " -port " ++ integer_to_list(Port) ++ " -kill")
    end.

drain(Os) ->
    receive
        stop ->
            {os_pid, Pid} = erlang:port_info(Os, os_pid),
            os:cmd("kill -TERM " ++ integer_to_list(Pid)),
            receive {Os, {exit_status, _}} -> ok after ?EXPECT_MS -> ok end;
        {Os, {data, _}} ->
            drain(Os);
        {Os, {exit_status, _}} ->
            ok
    end.

await_epmd(Port, Deadline) ->
    case gen_tcp:connect({127, 0, 0, 1}, Port, []) of
        {ok, S} ->
            gen_tcp:close(S),
            ok;
        _ ->
            case now_ms() > Deadline of
                true -> error(no_epmd);
                false -> timer:sleep(5), await_epmd(Port, Deadline)
            end
    end.

%% After a step: the main process's messages, then each idle helper's (by
%% name) as {P, Msg}, then the results of async steps that ended, as
%% {P, result, R} (by name). An async step's end counts as an arrival for the
%% main process's wait; a helper still in an async step is not asked (its
%% messages wait for the step its result comes in). Expect ([{Who, N |
%% result}]) is what must come first, each wait then comes after it.
collect_all(Expect, #{helpers := Hs, seen := Seen} = S) ->
    Wait = msg_wait(),
    Deadline = now_ms() + ?EXPECT_MS,
    Need = {lists:sum([N || {self, N} <- Expect]), [P || {P, result} <- Expect]},
    Got = collect_main(Wait, Need, Deadline),
    Own = [M || M <- Got, not ?IS_DIFF(M)],
    Done = lists:sort([{P, R} || {'$diff', P, async_result, R} <- Got]),
    Hs1 = lists:foldl(fun({P, _}, A) -> maps:update_with(P, fun(H) -> H#{state := idle} end, A) end,
                      Hs, Done),
    Idle = lists:sort([{P, Pid} || {P, #{state := idle, pid := Pid}} <- maps:to_list(Hs1)]),
    [error({expect_from_busy_helper, P}) || {P, N} <- Expect, P =/= self, is_integer(N),
                                              not lists:keymember(P, 1, Idle)],
    [Pid ! {'$diff', {collect, Wait, lists:sum([N || {Q, N} <- Expect, Q =:= P, is_integer(N)]),
                      Deadline}}
     || {P, Pid} <- Idle],
    %% A helper that an exit signal ended has no messages to give: its end
    %% is put back for wait_exit.
    Theirs = [{P, receive {'$diff', P, msgs, Ms} -> Ms;
                          {'$diff', P, down, _} = Down -> self() ! Down, []
                  end} || {P, _} <- Idle],
    Seen1 = lists:foldl(fun({Who, Ms}, A) -> see(Who, Ms, A) end, Seen,
                        [{self, Own} | Theirs]),
    Msgs = Own ++ [{P, M} || {P, Ms} <- Theirs, M <- Ms] ++ [{P, result, R} || {P, R} <- Done],
    {Msgs, S#{helpers := Hs1, seen := Seen1}}.

msg_wait() ->
    case get(msg_wait) of undefined -> ?WAIT; Ms -> Ms end.

%% Need is {N, Ps}: N more messages, and the ends of the async steps of the
%% helpers Ps, to wait for (until Deadline) before the usual wait.
collect_main(Wait, {N, Ps}, Deadline) ->
    receive
        {'$diff', P, async_result, _} = D -> [D | collect_main(Wait, {N, Ps -- [P]}, Deadline)];
        M when not ?IS_DIFF(M) -> [M | collect_main(Wait, {N - 1, Ps}, Deadline)]
    after wait_for(N =< 0 andalso Ps =:= [], Wait, Deadline) -> []
    end.

collect(Wait, N, Deadline) ->
    receive M when not ?IS_DIFF(M) -> [M | collect(Wait, N - 1, Deadline)]
    after wait_for(N =< 0, Wait, Deadline) -> []
    end.

%% The time to wait for the next message: the usual wait once what was
%% expected has come, else what is left until the deadline.
wait_for(true, Wait, _) -> Wait;
wait_for(false, _, Deadline) -> max(0, Deadline - now_ms()).

%% The ports in Msgs, after those Who has seen, each once.
see(Who, Msgs, Seen) ->
    Old = maps:get(Who, Seen, []),
    New = lists:foldl(fun(P, A) -> case lists:member(P, A) of true -> A; false -> A ++ [P] end end,
                      Old, ports_in(Msgs)),
    Seen#{Who => New}.

ports_in(P) when is_port(P) -> [P];
ports_in([H | T]) -> ports_in(H) ++ ports_in(T);
ports_in(T) when is_tuple(T) -> ports_in(tuple_to_list(T));
ports_in(M) when is_map(M) -> ports_in(lists:sort(maps:to_list(M)));
ports_in(_) -> [].

%% ---- edrv ------------------------------------------------------------------

run_edrv(Runner, Dir, Steps) ->
    Port = open_port({spawn_executable, Runner},
                     [{args, [Dir]}, binary, {packet, 4}, exit_status]),
    port_command(Port, term_to_binary([for_runner(S) || S <- Steps])),
    receive
        {Port, {data, Bin}} ->
            receive {Port, {exit_status, 0}} -> binary_to_term(Bin);
                    {Port, {exit_status, N}} -> error({runner_exit_status, N})
            end;
        {Port, {exit_status, N}} ->
            error({runner_exit_status, N})
    after 100000 -> % ctest's own bound is 120 s, for both runs
            error(runner_timeout)
    end.

%% Names, commands and data as binaries, call terms in ETF. Command data that
%% is an iolist goes as the list of its pieces, for edrv_port_commandv; with
%% options (port_command/3), always as a list, for edrv_port_command_opts.
for_runner({load, Name}) -> {load, bin(Name)};
for_runner({unload, Name}) -> {unload, bin(Name)};
for_runner({open, Command, Opts}) -> {open, bin(Command), Opts};
for_runner({close, I}) -> {close, I};
for_runner({command, I, Data}) when is_binary(Data) -> {command, I, Data};
for_runner({command, I, Data}) -> {command, I, pieces(Data)};
for_runner({control, I, Op, Data}) -> {control, I, Op, bin(Data)};
for_runner({call, I, Op, Term}) -> {call, I, Op, term_to_binary(Term)};
for_runner({command, I, Data, Opts}) when is_binary(Data) -> {command, I, [Data], Opts};
for_runner({command, I, Data, Opts}) -> {command, I, pieces(Data), Opts};
for_runner({sleep, Ms}) -> {sleep, Ms};
for_runner({msg_wait, Ms}) -> {msg_wait, Ms};
for_runner({spawn, P}) -> {spawn, P};
for_runner({spawn_notrap, P}) -> {spawn_notrap, P};
for_runner({wait_exit, P}) -> {wait_exit, P};
for_runner({alive, P}) -> {alive, P};
for_runner({as, P, Step}) -> {as, P, for_runner(Step)};
for_runner({async, P, Step}) -> {async, P, for_runner(Step)};
for_runner({exit, P}) -> {exit, P};
for_runner({adopt, Who}) -> {adopt, Who};
for_runner({expect, N, Step}) when is_integer(N) -> {expect, [{self, N}], for_runner(Step)};
for_runner({expect, Spec, Step}) -> {expect, Spec, for_runner(Step)};
for_runner({await, Step, Want}) -> {await, for_runner(Step), term_to_binary(Want)}.

bin(A) when is_atom(A) -> atom_to_binary(A);
bin(Data) -> iolist_to_binary(Data).

%% The pieces of an iolist: each binary as it is, each run of bytes as one.
pieces(IoList) -> merge(flat(IoList, [])).

flat([H | T], Acc) -> flat(H, flat(T, Acc));
flat([], Acc) -> Acc;
flat(X, Acc) -> [X | Acc].

merge([]) -> [];
merge([B | T]) when is_binary(B) -> [B | merge(T)];
merge(L) ->
    {Bytes, T} = lists:splitwith(fun is_integer/1, L),
    [list_to_binary(Bytes) | merge(T)].

%% ---- normalizing -------------------------------------------------------------

%% {Self, Helpers, Results} -> Results with ports and pids replaced, then
%% adrv's job ids and lanes (see the top of the file). Helpers is a list of
%% {Pid, Name}.
normalize(Steps, {Self, Helpers, Results}) ->
    Pids = maps:from_list([{Self, self} | [{P, {pid, N}} || {P, N} <- Helpers]]),
    {Norm, _} = norm(Results, Pids, #{}),
    async_norm(Steps, Norm, adrv_ports(Steps, 1), #{}).

norm(P, _Pids, Ports) when is_port(P) ->
    case Ports of
        #{P := K} -> {{port, K}, Ports};
        _ -> K = map_size(Ports) + 1, {{port, K}, Ports#{P => K}}
    end;
norm(P, Pids, Ports) when is_pid(P) ->
    {maps:get(P, Pids, pid), Ports};
norm([H | T], Pids, Ports) ->
    {H1, Ports1} = norm(H, Pids, Ports),
    {T1, Ports2} = norm(T, Pids, Ports1),
    {[H1 | T1], Ports2};
norm(T, Pids, Ports) when is_tuple(T) ->
    {L, Ports1} = norm(tuple_to_list(T), Pids, Ports),
    {list_to_tuple(L), Ports1};
norm(M, Pids, Ports) when is_map(M) ->
    {L, Ports1} = norm(lists:sort(maps:to_list(M)), Pids, Ports),
    {maps:from_list(L), Ports1};
norm(X, _Pids, Ports) ->
    {X, Ports}.

%% ---- normalizing the async pool (adrv) -----------------------------------------

%% The indices of the ports opened on adrv (by any process).
adrv_ports([], _) -> [];
adrv_ports([{as, _, {open, _, _} = Open} | Rest], I) ->
    adrv_ports([Open | Rest], I);
adrv_ports([{expect, _, Step} | Rest], I) ->
    adrv_ports([Step | Rest], I);
adrv_ports([{open, Command, _} | Rest], I) ->
    case string:lexemes(bin(Command), " ") of
        [<<"adrv">> | _] -> [I | adrv_ports(Rest, I + 1)];
        _ -> adrv_ports(Rest, I + 1)
    end;
adrv_ports([Step | Rest], I) ->
    case takes_index(Step) of
        true -> adrv_ports(Rest, I + 1);
        false -> adrv_ports(Rest, I)
    end.

async_norm([], [], _Adrv, _Lanes) ->
    [];
async_norm([Step | Steps], [{Result, Msgs} | Results], Adrv, Lanes) ->
    {Msgs1, Lanes1} = lanes(order_done(Msgs), Lanes),
    [{reply(Step, Result, Adrv), Msgs1} | async_norm(Steps, Results, Adrv, Lanes1)].

%% SUBMIT (1) and BLOCK (3) replies without the job id.
reply({as, _, Step}, Result, Adrv) ->
    reply(Step, Result, Adrv);
reply({expect, _, Step}, Result, Adrv) ->
    reply(Step, Result, Adrv);
reply({await, Step, _}, Result, Adrv) ->
    reply(Step, Result, Adrv);
reply({control, I, Op, _}, {ok, Reply}, Adrv) when Op =:= 1; Op =:= 3 ->
    case {lists:member(I, Adrv), Op, string:split(Reply, ",")} of
        {true, 1, [_Id, KeyAfter]} -> {ok, {submitted, KeyAfter}};
        {true, 3, [_Id]} -> {ok, blocked};
        _ -> {ok, Reply}
    end;
reply(_, Result, _) ->
    Result.

is_done({done, _, _, _, _}) -> true;
is_done(_) -> false.

%% The done messages grouped by lane, into the places done messages took.
order_done(Msgs) ->
    Done = [M || M <- Msgs, is_done(M)],
    Groups = [{lists:min([{S, K, O} || {done, K, S, O, _} <- G]), G}
              || G <- group_by_lane(Done)],
    put_back(Msgs, lists:append([G || {_, G} <- lists:sort(Groups)])).

group_by_lane([]) ->
    [];
group_by_lane([{done, _, _, _, []} = M | Done]) ->
    [[M] | group_by_lane(Done)]; % BLOCK jobs: no lane, each on its own
group_by_lane([{done, _, _, _, Lane} | _] = Done) ->
    {Same, Other} = lists:partition(fun({done, _, _, _, L}) -> L =:= Lane end, Done),
    [Same | group_by_lane(Other)].

put_back([], []) -> [];
put_back([M | Msgs], Done) ->
    case is_done(M) of
        true -> [hd(Done) | put_back(Msgs, tl(Done))];
        false -> [M | put_back(Msgs, Done)]
    end.

%% Lane names to {lane, K}, K by first appearance.
lanes([], Lanes) ->
    {[], Lanes};
lanes([{done, K, S, O, Lane} | Msgs], Lanes) when Lane =/= [] ->
    {L, Lanes1} = case Lanes of
                      #{Lane := L0} -> {L0, Lanes};
                      _ -> L0 = {lane, map_size(Lanes) + 1}, {L0, Lanes#{Lane => L0}}
                  end,
    {Msgs1, Lanes2} = lanes(Msgs, Lanes1),
    {[{done, K, S, O, L} | Msgs1], Lanes2};
lanes([M | Msgs], Lanes) ->
    {Msgs1, Lanes1} = lanes(Msgs, Lanes),
    {[M | Msgs1], Lanes1}.
