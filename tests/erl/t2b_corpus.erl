%% Writes term_to_binary's output for a corpus of terms and options, for
%% tests/lua/t2b_test.lua to compare edrv.term_to_binary with, byte for
%% byte. Each case in the file: Size:32 then term_to_binary(Opts), Size:32
%% then term_to_binary(Term, Opts).
-module(t2b_corpus).
-export([main/1]).

terms() ->
    Big = lists:seq(1, 300),
    [0, 1, 255, 256, -1, -256, 2147483647, -2147483648, 2147483648,
     1 bsl 62, -(1 bsl 63), (1 bsl 63) - 1, 1 bsl 63, (1 bsl 64) - 1, 1 bsl 64,
     1 bsl 100, -(1 bsl 100),
     0.0, 1.5, -2.5e-300, 1.0e300, 0.1, 123456789.125, -0.0,
     abc, '', 'hello world', true, false, undefined, list_to_atom([228, 246]),
     list_to_atom([256, 1000]), list_to_atom(lists:duplicate(255, $x)),
     list_to_atom(lists:duplicate(100, 1000)),
     <<>>, <<"abc">>, <<0, 255>>, <<1:3>>, <<1, 2, 3:5>>, binary:copy(<<"xy">>, 1000),
     "abc", [], [1, 2, 3], [1, a, "b"], [300], [1 | 2], [[1], [[2]], []], [a | <<"t">>],
     lists:duplicate(70000, $z), lists:duplicate(65535, $q), [-1], [256 | []],
     {}, {a, b}, list_to_tuple(Big), {{{}}, [{}]},
     #{}, #{a => 1}, #{1 => x, a => y, "s" => z, <<"b">> => w, {t} => v, 2.5 => f},
     #{k => #{n => [#{}]}}, maps:from_list([{I, I * I} || I <- lists:seq(1, 32)]),
     self(), make_ref(), {self(), make_ref(), [self()]},
     fun erlang:abs/1, {fun lists:map/2},
     #{self() => pid, [] => nil, {} => tuple}].

opts() ->
    [[], [compressed], [{compressed, 1}], [{compressed, 9}], [{compressed, 0}],
     [{minor_version, 0}], [{minor_version, 2}], [{minor_version, 1}, compressed]].

main([Out]) ->
    Large = [maps:from_list([{I, {I}} || I <- lists:seq(1, 40)]),
             maps:from_list([{integer_to_list(I), I} || I <- lists:seq(1, 100)])],
    Cases = [{O, T} || O <- opts(), T <- terms()] ++
            [{[deterministic], T} || T <- Large] ++
            [{[deterministic, compressed], T} || T <- Large],
    Bytes = [[enc(term_to_binary(O)), enc(term_to_binary(T, O))] || {O, T} <- Cases],
    ok = file:write_file(Out, Bytes),
    io:format("~b cases~n", [length(Cases)]),
    halt(0).

enc(B) -> [<<(byte_size(B)):32>>, B].
