//! Parsing of `#[handler(topic = "…", group = "…", event_id = "…", crate = "…")]`.
//!
//! Every mistake is reported once, at the token that is wrong (or at the whole
//! attribute for a missing argument), with the fix in the message.

use proc_macro2::{Span, TokenStream};
use syn::meta::ParseNestedMeta;
use syn::parse::Parser;
use syn::{Expr, ExprLit, Lit, LitStr, Path};

/// The valid arguments, as listed in error messages.
const EXPECTED: &str = "expected `topic`, `topics`, `group`, `event_id`, `event_id_header` or `crate`";

/// Messages for errors that are not at a single token, or too long to inline.
const MISSING_TOPIC: &str =
    "missing topic: add `topic = \"…\"` (or `topics = [\"…\", …]`) to say what the handler consumes";
const MISSING_GROUP: &str = "missing consumer group: add `group = \"…\"`";
const TWO_EVENT_IDS: &str =
    "the event id comes from one place: `event_id = \"…\"` (a payload field) or `event_id_header = \"…\"`, not both";
const MIXED_FORMS: &str =
    "`topic` and `topics` cannot be combined: repeat `topic = \"…\"` or list them all in `topics = [..]`";

/// The parsed arguments of one `#[handler(..)]`.
pub(crate) struct Args {
    /// The topics to subscribe to, at least one, none empty.
    pub(crate) topics: Vec<LitStr>,
    /// The consumer group, not empty.
    pub(crate) group: LitStr,
    /// Where the event id is, if declared.
    pub(crate) event_id: Option<EventId>,
    /// The path to the `kafka_handler` crate (default `::kafka_handler`).
    pub(crate) krate: Path,
}

/// `event_id = "field"` or `event_id_header = "name"`.
pub(crate) enum EventId {
    Field(LitStr),
    Header(LitStr),
}

/// Parses the attribute's arguments.
pub(crate) fn parse(args: TokenStream) -> syn::Result<Args> {
    let mut partial = Partial::default();
    syn::meta::parser(|meta| partial.arg(meta)).parse2(args)?;
    partial.finish()
}

/// The arguments seen so far; `topic_form` is `"topic"` or `"topics"`,
/// whichever was used first, to reject mixing them.
#[derive(Default)]
struct Partial {
    topics: Vec<LitStr>,
    topic_form: Option<&'static str>,
    group: Option<LitStr>,
    event_id: Option<EventId>,
    krate: Option<Path>,
}

impl Partial {
    /// Takes one `name = value` argument.
    fn arg(&mut self, meta: ParseNestedMeta<'_>) -> syn::Result<()> {
        let name = meta.path.get_ident().map(ToString::to_string).unwrap_or_default();
        match name.as_str() {
            "topic" => {
                self.topic_form("topic", &meta)?;
                let value: Expr = meta.value()?.parse()?;
                self.topics.push(non_empty_string(&value, "topic", "topic = \"orders\"")?);
            }
            "topics" => {
                self.topic_form("topics", &meta)?;
                let value: Expr = meta.value()?.parse()?;
                self.topics = string_array(&value)?;
            }
            "group" => {
                if self.group.is_some() {
                    return Err(meta.error("duplicate `group` argument"));
                }
                let value: Expr = meta.value()?.parse()?;
                self.group = Some(non_empty_string(&value, "group", "group = \"inventory\"")?);
            }
            "event_id" | "event_id_header" => {
                if self.event_id.is_some() {
                    return Err(meta.error(TWO_EVENT_IDS));
                }
                let value: Expr = meta.value()?.parse()?;
                let lit = non_empty_string(&value, &name, "event_id = \"eventId\"")?;
                self.event_id = Some(if name == "event_id" { EventId::Field(lit) } else { EventId::Header(lit) });
            }
            "crate" => {
                if self.krate.is_some() {
                    return Err(meta.error("duplicate `crate` argument"));
                }
                let value: Expr = meta.value()?.parse()?;
                let lit = non_empty_string(&value, "crate", "crate = \"::kafka_handler\"")?;
                self.krate = Some(lit.parse_with(Path::parse_mod_style)?);
            }
            _ => {
                let path = &meta.path;
                let path = quote::quote!(#path).to_string().replace(' ', "");
                let hint = closest(&path).map(|known| format!("did you mean `{known}`? ")).unwrap_or_default();
                return Err(meta.error(format!("unknown argument `{path}`; {hint}{EXPECTED}")));
            }
        }
        Ok(())
    }

    /// Notes which of `topic`/`topics` is used: mixing them, or giving
    /// `topics` twice, is an error at the second one.
    fn topic_form(&mut self, form: &'static str, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
        match self.topic_form.replace(form) {
            Some(seen) if seen != form => Err(meta.error(MIXED_FORMS)),
            Some("topics") => Err(meta.error("duplicate `topics` argument")),
            _ => Ok(()),
        }
    }

    /// Checks that the required arguments were given; reports both when
    /// both are missing.
    fn finish(self) -> syn::Result<Args> {
        let missing_topic = self.topics.is_empty().then_some(MISSING_TOPIC);
        let missing_group = self.group.is_none().then_some(MISSING_GROUP);
        let errors = [missing_topic, missing_group].into_iter().flatten();
        if let Some(error) = join(errors.map(|msg| syn::Error::new(Span::call_site(), msg))) {
            return Err(error);
        }
        Ok(Args {
            topics: self.topics,
            group: self.group.expect("checked above"),
            event_id: self.event_id,
            krate: self.krate.unwrap_or_else(|| syn::parse_quote!(::kafka_handler)),
        })
    }
}

/// All `errors` as one, so that each is reported; `None` if there are none.
pub(crate) fn join(errors: impl IntoIterator<Item = syn::Error>) -> Option<syn::Error> {
    errors.into_iter().reduce(|mut all, e| {
        all.combine(e);
        all
    })
}

/// A non-empty string literal, or an error at `value` that shows `example`.
fn non_empty_string(value: &Expr, what: &str, example: &str) -> syn::Result<LitStr> {
    let Expr::Lit(ExprLit { lit: Lit::Str(lit), .. }) = value else {
        return Err(syn::Error::new_spanned(value, format!("`{what}` expects a string literal, like `{example}`")));
    };
    if lit.value().is_empty() {
        return Err(syn::Error::new(lit.span(), format!("`{what}` must not be empty")));
    }
    Ok(lit.clone())
}

/// `["a", "b"]`: at least one topic, each a non-empty string literal.
fn string_array(value: &Expr) -> syn::Result<Vec<LitStr>> {
    let Expr::Array(array) = value else {
        return Err(syn::Error::new_spanned(
            value,
            "`topics` expects an array of string literals, like `topics = [\"orders\", \"refunds\"]`",
        ));
    };
    if array.elems.is_empty() {
        return Err(syn::Error::new_spanned(array, "`topics` must list at least one topic"));
    }
    array.elems.iter().map(|e| non_empty_string(e, "topic", "topics = [\"orders\"]")).collect()
}

/// The known argument `name` is most likely a misspelling of: at most two
/// edits (insertions, deletions, substitutions) away.
fn closest(name: &str) -> Option<&'static str> {
    const KNOWN: [&str; 6] = ["topic", "topics", "group", "event_id", "event_id_header", "crate"];
    KNOWN.into_iter().map(|known| (edits(name, known), known)).filter(|&(d, _)| d <= 2).min().map(|(_, k)| k)
}

/// Levenshtein distance.
fn edits(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != cb)).min(row[j] + 1).min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(args: TokenStream) -> Vec<String> {
        match parse(args) {
            Ok(_) => Vec::new(),
            Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn topics_keep_their_order_and_crate_defaults() {
        let args = parse(quote::quote!(topic = "a", group = "g", topic = "b")).unwrap();
        assert_eq!(args.topics.iter().map(LitStr::value).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(args.group.value(), "g");
        let krate = &args.krate;
        assert_eq!(quote::quote!(#krate).to_string(), quote::quote!(::kafka_handler).to_string());
    }

    #[test]
    fn both_missing_arguments_are_reported() {
        assert_eq!(errors(TokenStream::new()), [MISSING_TOPIC, MISSING_GROUP]);
    }

    #[test]
    fn one_event_id_source() {
        let args = parse(quote::quote!(topic = "a", group = "g", event_id_header = "id")).unwrap();
        assert!(matches!(args.event_id, Some(EventId::Header(h)) if h.value() == "id"));
        assert_eq!(
            errors(quote::quote!(topic = "a", group = "g", event_id = "x", event_id_header = "y")),
            [TWO_EVENT_IDS]
        );
    }

    #[test]
    fn bad_lists_are_rejected() {
        assert_eq!(errors(quote::quote!(topics = [], group = "g")), ["`topics` must list at least one topic"]);
        assert_eq!(errors(quote::quote!(topics = ["a"], topics = ["b"], group = "g")), ["duplicate `topics` argument"]);
        assert_eq!(errors(quote::quote!(topics = ["a", 1], group = "g")).len(), 1);
        assert_eq!(errors(quote::quote!(topic = "a", group = "")), ["`group` must not be empty"]);
    }
}
