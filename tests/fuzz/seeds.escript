#!/usr/bin/env escript
%% Writes the seed corpora of tests/fuzz: corpus/etf (terms as term_to_binary
%% makes them, including messages shaped as edrv delivers them) and
%% corpus/spec (term specs in fuzz_spec.c's input format). The files are in
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
