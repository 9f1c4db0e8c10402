#!/usr/bin/env escript
%% Writes the seed corpora of tests/fuzz: corpus/etf (terms as term_to_binary
%% makes them, including messages shaped as edrv delivers them) and
%% corpus/spec (term specs in fuzz_spec.c's input format) and corpus/node
%% (packets from a BEAM node, in fuzz_node.c's input format). The files are in
%% the repository; run this again after changing it:
%%   escript tests/fuzz/seeds.escript tests/fuzz/corpus
-mode(compile).

main([Dir]) ->
    Etf = filename:join(Dir, "etf"),
    Spec = filename:join(Dir, "spec"),
    ok = filelib:ensure_dir(filename:join(Etf, "x")),
    ok = filelib:ensure_dir(filename:join(Spec, "x")),
    [write(Etf, Name, term_to_binary(T)) || {Name, T} <- terms()],
    write(Etf, "float_old_format", term_to_binary(1.5, [{minor_version, 0}])),
    write(Etf, "compressed", term_to_binary(lists:seq(1, 300), [compressed])),
    [write(Spec, Name, S) || {Name, S} <- specs()],
    Node = filename:join(Dir, "node"),
    ok = filelib:ensure_dir(filename:join(Node, "x")),
    [write(Node, Name, << <<(byte_size(P)):16, P/binary>> || P <- Ps >>)
     || {Name, Ps} <- node_seeds()],
    ok.

write(Dir, Name, Bytes) ->
    ok = file:write_file(filename:join(Dir, Name), Bytes).

terms() ->
    Port = hd(erlang:ports()),
    Y = 5,
    [{"int_small", 42}, {"int_negative", -1}, {"int_32", 100000},
     {"big_64", 1 bsl 64 + 1}, {"big_negative", -(1 bsl 70)}, {"big_300", 1 bsl 300},
     {"float", 3.14}, {"float_negative_zero", -0.0},
     {"atom", ok}, {"atom_quoted", 'hello world'}, {"atom_utf8", 'café'},
     {"atom_255", list_to_atom(lists:duplicate(255, $z))},
     {"string", "abc"}, {"string_unprintable", [0, 1, 200, 255]},
     {"list", [1, a, <<"b">>]}, {"list_improper", [a | b]}, {"nil", []},
     {"binary", <<"hi">>}, {"binary_empty", <<>>}, {"binary_bytes", <<0, 1, 2, 255>>},
     {"bitstring", <<1:3>>},
     {"tuple_empty", {}}, {"tuple", {a, b, c}}, {"tuple_large", list_to_tuple(lists:seq(1, 300))},
     {"map", #{a => 1, "k" => [1], {x} => #{}}}, {"map_empty", #{}},
     {"pid", self()}, {"port", Port}, {"ref", make_ref()},
     {"fun_export", fun erlang:self/0}, {"fun_closure", fun(X) -> X + Y end},
     {"nested_lists", lists:foldl(fun(_, A) -> [A] end, [], lists:seq(1, 100))},
     {"nested_tuples", lists:foldl(fun(_, A) -> {A} end, ok, lists:seq(1, 100))},
     %% Messages as edrv sends them, and a port_call reply.
     {"msg_data_binary", {Port, {data, <<"hello">>}}},
     {"msg_data_list", {Port, {data, "hello"}}},
     {"msg_exit", {'EXIT', Port, normal}}, {"msg_eof", {Port, eof}},
     {"msg_term", {Port, {ok, 1, -2, 3.5, [self()], #{data => <<1, 2>>}}}},
     {"call_reply", {ok, <<"x">>, [1 | 2]}}].

%% fuzz_spec.c's operations: the tag's index in its spec_tags, then arguments.
-define(NIL, 0). -define(ATOM, 1). -define(INT, 2). -define(PORT, 3).
-define(BINARY, 4). -define(STRING, 5). -define(TUPLE, 6). -define(LIST, 7).
-define(PID, 8). -define(STRING_CONS, 9). -define(FLOAT, 10). -define(EXT2TERM, 11).
-define(UINT, 12). -define(BUF2BINARY, 13). -define(INT64, 14). -define(UINT64, 15).
-define(MAP, 16). -define(RAW, 17).

int(I) -> <<?INT, I:64/signed-little>>.
uint(I) -> <<?UINT, I:64/little>>.
flt(F) -> <<?FLOAT, F:64/float-little>>.
bytes(Op, B) -> <<Op, (byte_size(B)):16, B/binary>>.
atom(K) -> <<?ATOM, K>>.  % fuzz_spec.c's atoms: ok data true '' café 'with space' 'EXIT' z*255

specs() ->
    Output = <<0>>, Send = <<1>>,
    Deep = lists:foldl(fun(_, A) -> <<A/binary, ?TUPLE, 1>> end, atom(0), lists:seq(1, 50)),
    [{"data_binary", <<Output/binary, ?PORT, 0, (atom(1))/binary,
                       (bytes(?BUF2BINARY, <<"hi">>))/binary, ?TUPLE, 2, ?TUPLE, 2>>},
     {"data_string", <<Output/binary, ?PORT, 0, (atom(1))/binary,
                       (bytes(?STRING, <<"hello">>))/binary, ?TUPLE, 2, ?TUPLE, 2>>},
     {"numbers_list", <<Output/binary, (atom(0))/binary, (int(42))/binary, (int(-1))/binary,
                        (flt(3.5))/binary, (int(1))/binary, (uint(1 bsl 63))/binary, ?NIL,
                        ?LIST, 3, ?TUPLE, 5>>},
     {"map_pid", <<Output/binary, (atom(0))/binary, (bytes(?STRING, <<"str">>))/binary,
                   (atom(1))/binary, ?PID, 0, ?MAP, 2>>},
     {"ext2term", <<Output/binary, (bytes(?EXT2TERM, term_to_binary({a, [1, 2], <<"x">>})))/binary,
                    (atom(2))/binary, ?TUPLE, 2>>},
     {"string_cons", <<Output/binary, ?NIL, (bytes(?STRING_CONS, <<"ab">>))/binary,
                       (bytes(?STRING_CONS, <<"cd">>))/binary>>},
     {"binary_64", <<Output/binary, ?BINARY, 1, 10, 5, ?INT64, -(1 bsl 63):64/signed-little,
                     ?UINT64, (1 bsl 64 - 1):64/little, (atom(7))/binary, (atom(4))/binary,
                     (atom(5))/binary, ?TUPLE, 5>>},
     {"send_term", <<Send/binary, ?PID, 0, (uint(7))/binary, ?TUPLE, 2>>},
     {"send_term_nobody", <<3, (atom(0))/binary>>},
     {"deep_tuples", <<Output/binary, Deep/binary>>},
     %% Refused: a list without its tail, an unknown tag, a NULL buffer with a
     %% length, a binary's range past its end.
     {"bad_list", <<Output/binary, ?LIST, 0>>},
     {"bad_tag", <<Output/binary, ?RAW, 99:64/little>>},
     {"bad_null_string", <<Output/binary, (?STRING + 18), 0, 3, "abc">>},
     {"bad_binary_range", <<Output/binary, ?BINARY, 1, 60, 10>>}].

%% ---- fuzz_node: packets from beam@127.0.0.1 to the node fuzz@127.0.0.1 -----------

pid(Node, Num) ->
    N = atom_to_binary(Node, utf8),
    binary_to_term(<<131, 88, 119, (byte_size(N)), N/binary, Num:32, 0:32, 1:32>>).

port(Node, Id) ->
    N = atom_to_binary(Node, utf8),
    binary_to_term(<<131, 89, 119, (byte_size(N)), N/binary, Id:32, 1:32>>).

packet(Ctl) -> <<"p", (term_to_binary(Ctl))/binary>>.
packet(Ctl, Msg) -> <<(packet(Ctl))/binary, (term_to_binary(Msg))/binary>>.

node_seeds() ->
    Beam = 'beam@127.0.0.1', Edrv = 'fuzz@127.0.0.1',
    From = pid(Beam, 100), Helper = pid(Beam, 101), Other = pid(Beam, 102),
    %% the node's process and the port that fuzz_node keeps open
    Self = pid(Edrv, 2), Port = port(Edrv, 1), Port2 = port(Edrv, 2),
    Req = fun(R) -> packet({6, From, '', edrv}, {'$edrv', tag, R, Helper}) end,
    Cast = fun(P, D) -> packet({6, From, '', edrv}, {'$edrv_cmd', P, D, Helper}) end,
    Open = Req({open_port, <<"fuzz_drv">>, [binary]}),
    [{"open_port", [Open]},
     {"open_port_bad", [Req({open_port, <<"nothing">>, [eof, binary]}),
                        Req({open_port, <<"fuzz_drv">>, [bad]})]},
     {"load_driver", [Req({load_driver, <<"/tmp">>, <<"x">>})]},
     {"unload_driver", [Req({unload_driver, <<"nothing">>})]},
     {"ping", [Req({ping})]},
     {"command", [Cast(Port, <<"data">>), Cast(Port, [<<"a">>, "bc", [[]], <<>>]),
                  Req({command, Port, <<"x">>, [nosuspend]}), Req({command, Port, "x", []})]},
     {"open_close", [Open, Req({close, Port2}), Req({close, Port2})]},
     {"control_call", [Req({control, Port, 1, <<"x">>}),
                            Req({call, Port, 0, {a, [1, 2], <<"b">>}}),
                            Req({call, Port, 1, {a}}), Req({info, Port}),
                            Req({info, Port, connected}), Req({info, Port2, name})]},
     {"open_then_exit", [Open, Open, packet({3, Helper, Self, killed})]},
     {"ack", [packet({6, Helper, '', edrv}, {'$edrv_ack', 1})]},
     {"not_a_request", [packet({6, From, '', edrv}, {hello}),
                        packet({6, From, '', edrv}, {'$edrv', tag, {nothing}, undefined})]},
     {"send", [packet({2, '', Self}, hello), packet({2, '', pid(Edrv, 99)}, hello),
               packet({6, From, '', nobody}, hello)]},
     {"link_unlink", [packet({1, From, Self}), packet({1, From, pid(Edrv, 7)}),
                      packet({35, 1, From, Self}), packet({4, From, Self})]},
     {"monitor", [packet({19, From, edrv, make_ref()}), packet({19, From, Self, make_ref()}),
                  packet({19, From, nobody, make_ref()}), packet({20, From, edrv, make_ref()})]},
     {"exits", [packet({3, Other, Self, normal}), packet({13, Other, Self, token, boom}),
                packet({8, Other, Self, boom}), packet({18, Other, Self, token, boom})]},
     {"tt_and_unknown", [packet({16, From, '', edrv, token}, {'$edrv', t, {ping}, Helper}),
                         packet({12, '', Self, token}, hi), packet({99}), <<>>]}].
