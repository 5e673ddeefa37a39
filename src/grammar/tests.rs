//! Unit tests of the GBNF parser and the UTF-8 decoding the matcher relies on.

use super::matcher::decode;
use super::parse::parse;
use super::{Elem, Kind};

fn rules(text: &str) -> Vec<Vec<Elem>> {
    parse(text, None).unwrap_or_else(|e| panic!("{text:?}: {e}")).rules
}

#[test]
fn repetitions_are_rewritten_as_llamacpp_does() {
    // S{2,3} -> S S S'(1), S'(1) ::= S |
    let r = rules("root ::= \"a\"{2,3}");
    assert_eq!(r.len(), 2);
    let (c, rr, end, alt) = (Kind::Char, Kind::RuleRef, Kind::End, Kind::Alt);
    let kinds: Vec<Kind> = r[0].iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [c, c, rr, end]);
    let kinds: Vec<Kind> = r[1].iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [c, alt, end]);
    // S* -> S', S' ::= S S' |
    let r = rules("root ::= [0-9]*");
    assert_eq!(
        r[1],
        [
            Elem::new(Kind::Char, '0' as u32),
            Elem::new(Kind::CharRngUpper, '9' as u32),
            Elem::new(Kind::RuleRef, 1),
            Elem::new(alt, 0),
            Elem::new(end, 0)
        ]
    );
}

#[test]
fn classes_escapes_and_comments() {
    let r = rules("# c\nroot ::= [^a\\x41-\\u0042\\]] . # trailing\n");
    let e = &r[0];
    assert_eq!(e[0], Elem::new(Kind::CharNot, 'a' as u32));
    assert_eq!(e[1], Elem::new(Kind::CharAlt, 0x41));
    assert_eq!(e[2], Elem::new(Kind::CharRngUpper, 0x42));
    assert_eq!(e[3], Elem::new(Kind::CharAlt, ']' as u32));
    assert_eq!(e[4].kind, Kind::CharAny);
    let r = rules("root ::= \"é\"");
    assert_eq!(r[0][0], Elem::new(Kind::Char, 'é' as u32));
}

#[test]
fn errors_name_the_place() {
    for (text, needle) in [
        ("root ::= \"abc", "line 1, column 14"),
        ("root ::= x\n", "'x'"),
        ("root := \"a\"", "'::='"),
        ("root ::= *", "needs an item"),
        ("\n\nroot ::= (\"a\"", "line 3"),
        ("root ::= \"a\"{3,1}", "below its minimum"),
        ("root ::= <|x|>", "vocabulary"),
    ] {
        let e = parse(text, None).err().unwrap_or_else(|| panic!("{text:?} parsed"));
        assert!(e.contains(needle), "{text:?}: {e}");
    }
}

#[test]
fn nested_repetitions_are_bounded() {
    // each optional repetition alone is within bounds; the group's rules times the outer
    // repetition are not (llama.cpp's check)
    assert!(parse("root ::= (\"a\"{0,50}){0,30}", None).is_ok());
    assert!(parse("root ::= (\"a\"{0,50}){0,50}", None).is_err());
}

#[test]
fn utf8_decoding_keeps_unfinished_chars() {
    let (cps, p) = decode("aé".as_bytes(), Default::default());
    assert_eq!(cps, ['a' as u32, 'é' as u32]);
    assert!(format!("{p:?}").contains("n_remain: 0"));
    // "€" is E2 82 AC: a token ending after two of its bytes, then the next token's byte
    let (cps, p) = decode(&[b'x', 0xE2, 0x82], Default::default());
    assert_eq!(cps, ['x' as u32]);
    let (cps, _) = decode(&[0xAC], p);
    assert_eq!(cps, ['€' as u32]);
    // a continuation byte first is not UTF-8
    let (cps, p) = decode(&[0x82, b'a'], Default::default());
    assert!(cps.is_empty());
    assert!(format!("{p:?}").contains("-1"));
}
