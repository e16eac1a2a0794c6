//! The live filter agrees with PostgreSQL's `jsonb @>` (which a replay from the log uses)
//! on thousands of generated documents.

use anika_dispatcher::filter::Filter;
use anika_testkit::admin_database_url;
use proptest::{
    prelude::*,
    strategy::ValueTree,
    test_runner::{Config, TestRunner},
};
use sqlx::Connection;

/// A JSON document before it is written out; each number says how to spell itself.
#[derive(Clone, Debug)]
enum Tree {
    Null,
    Bool(bool),
    /// `mantissa × 10^-scale`, spelled in one of several equivalent ways.
    Number {
        mantissa: i64,
        scale: u32,
        spelling: u8,
    },
    /// A literal that `f64` cannot tell from its neighbours.
    Precise(&'static str),
    String(&'static str),
    Array(Vec<Tree>),
    Object(Vec<(&'static str, Tree)>),
}

impl Tree {
    fn render(&self) -> String {
        match self {
            Self::Null => "null".into(),
            Self::Bool(b) => b.to_string(),
            Self::Number {
                mantissa,
                scale,
                spelling,
            } => spell(*mantissa, *scale, *spelling),
            Self::Precise(text) => (*text).into(),
            Self::String(s) => serde_json::to_string(s).expect("a string"),
            Self::Array(items) => format!(
                "[{}]",
                items.iter().map(Self::render).collect::<Vec<_>>().join(",")
            ),
            Self::Object(pairs) => format!(
                "{{{}}}",
                pairs
                    .iter()
                    .map(|(k, v)| format!("{}:{}", key(k), v.render()))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }
}

/// A key, sometimes written with a `\u` escape (the same key to PostgreSQL).
fn key(k: &str) -> String {
    if k == "é" {
        "\"\\u00e9\"".into()
    } else {
        serde_json::to_string(k).expect("a key")
    }
}

/// `mantissa × 10^-scale` as `12.5`, `12.500`, `125e-1` or `1.25E+1`.
fn spell(mantissa: i64, scale: u32, spelling: u8) -> String {
    let sign = if mantissa < 0 { "-" } else { "" };
    let digits = mantissa.unsigned_abs().to_string();
    let plain = if scale == 0 {
        digits.clone()
    } else {
        let padded = format!("{digits:0>width$}", width = scale as usize + 1);
        let (int, frac) = padded.split_at(padded.len() - scale as usize);
        format!("{int}.{frac}")
    };
    match spelling % 4 {
        0 => format!("{sign}{plain}"),
        1 if scale == 0 => format!("{sign}{plain}.00"),
        1 => format!("{sign}{plain}00"),
        2 => format!("{sign}{digits}e-{scale}"),
        _ => {
            let exp = digits.len() as i64 - 1 - i64::from(scale);
            let (first, rest) = digits.split_at(1);
            let rest = if rest.is_empty() { "0" } else { rest };
            format!("{sign}{first}.{rest}E{exp:+}")
        }
    }
}

fn scalar() -> impl Strategy<Value = Tree> {
    prop_oneof![
        Just(Tree::Null),
        any::<bool>().prop_map(Tree::Bool),
        (
            prop_oneof![Just(0i64), Just(1), Just(-1), Just(10), Just(25), Just(100)],
            0u32..3,
            any::<u8>()
        )
            .prop_map(|(mantissa, scale, spelling)| Tree::Number {
                mantissa,
                scale,
                spelling
            }),
        prop_oneof![
            Just("0.1"),
            Just("0.10000000000000000001"),
            Just("9007199254740992"),
            Just("9007199254740993"),
            Just("-0"),
        ]
        .prop_map(Tree::Precise),
        prop_oneof![Just("x"), Just("y"), Just("é"), Just(""), Just("1")].prop_map(Tree::String),
    ]
}

fn tree() -> impl Strategy<Value = Tree> {
    scalar().prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Tree::Array),
            prop::collection::vec((prop_oneof![Just("a"), Just("b"), Just("é")], inner), 0..4)
                .prop_map(Tree::Object),
        ]
    })
}

/// A part of `doc` (what a filter that should match looks like), respelled, sometimes changed.
fn part_of(doc: Tree) -> BoxedStrategy<Tree> {
    match doc {
        Tree::Object(pairs) if !pairs.is_empty() => {
            let n = pairs.len();
            (prop::collection::vec(any::<bool>(), n), any::<u64>())
                .prop_flat_map(move |(keep, seed)| {
                    let kept: Vec<BoxedStrategy<(&'static str, Tree)>> = pairs
                        .iter()
                        .zip(&keep)
                        .filter(|(_, k)| **k)
                        .map(|((k, v), _)| {
                            let k = *k;
                            part_or_other(v.clone(), seed)
                                .prop_map(move |v| (k, v))
                                .boxed()
                        })
                        .collect();
                    kept.prop_map(Tree::Object)
                })
                .boxed()
        }
        Tree::Array(items) if !items.is_empty() => {
            let n = items.len();
            (prop::collection::vec(any::<bool>(), n), any::<u64>())
                .prop_flat_map(move |(keep, seed)| {
                    let kept: Vec<BoxedStrategy<Tree>> = items
                        .iter()
                        .zip(&keep)
                        .filter(|(_, k)| **k)
                        .map(|(v, _)| part_or_other(v.clone(), seed))
                        .collect();
                    kept.prop_map(Tree::Array)
                })
                .boxed()
        }
        Tree::Number {
            mantissa, scale, ..
        } => any::<u8>()
            .prop_map(move |spelling| Tree::Number {
                mantissa,
                scale,
                spelling,
            })
            .boxed(),
        other => Just(other).boxed(),
    }
}

/// Mostly a part of `doc`; one time in eight something else entirely.
fn part_or_other(doc: Tree, seed: u64) -> BoxedStrategy<Tree> {
    if seed.is_multiple_of(8) {
        tree().boxed()
    } else {
        part_of(doc)
    }
}

/// (document, filter) pairs: independent ones, and filters cut from their document.
fn pairs() -> impl Strategy<Value = (Tree, Tree)> {
    prop_oneof![
        (tree(), tree()),
        tree().prop_flat_map(|doc| (Just(doc.clone()), part_of(doc))),
        // Object filters on object documents: the shape subscriptions use.
        prop::collection::vec((prop_oneof![Just("a"), Just("b")], tree()), 0..4)
            .prop_map(Tree::Object)
            .prop_flat_map(|doc| (Just(doc.clone()), part_of(doc))),
    ]
}

#[tokio::test]
async fn the_live_filter_agrees_with_postgresqls_jsonb_containment_on_generated_documents() {
    const CASES: usize = 4000;
    let mut runner = TestRunner::new(Config::default());
    let strategy = pairs();
    let (docs, filters): (Vec<String>, Vec<String>) = (0..CASES)
        .map(|_| {
            let (doc, filter) = strategy.new_tree(&mut runner).expect("a case").current();
            (doc.render(), filter.render())
        })
        .unzip();

    let mut db = sqlx::PgConnection::connect(&admin_database_url())
        .await
        .expect("PostgreSQL");
    let answers: Vec<bool> = sqlx::query_scalar(
        "SELECT d::jsonb @> f::jsonb FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(d, f, i) \
         ORDER BY i",
    )
    .bind(&docs)
    .bind(&filters)
    .fetch_all(&mut db)
    .await
    .expect("PostgreSQL compares them");

    let mut disagreements = Vec::new();
    for ((doc, filter), postgres) in docs.iter().zip(&filters).zip(&answers) {
        let live = Filter::parse(filter).expect("a filter").matches(doc);
        if live != *postgres {
            disagreements.push(format!(
                "{doc} @> {filter}: PostgreSQL {postgres}, live {live}"
            ));
        }
    }
    let held = answers.iter().filter(|a| **a).count();
    assert!(
        disagreements.is_empty(),
        "{} of {CASES} disagree, e.g.:\n{}",
        disagreements.len(),
        disagreements[..disagreements.len().min(10)].join("\n")
    );
    // The generator is only useful if it makes both answers often.
    assert!(
        held > CASES / 5 && held < CASES * 4 / 5,
        "{held} of {CASES} cases contain their filter; the generator is lopsided"
    );
}
