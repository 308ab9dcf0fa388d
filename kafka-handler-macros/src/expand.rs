//! Checks the annotated function and generates the handler type.
//!
//! `async fn reserve_stock(..)` becomes a unit struct `reserve_stock` (the
//! value given to `ConsumerBuilder::handler`) whose inherent `handle` is the
//! original function. Its `Handler` impl extracts the arguments and converts
//! the outcome as the library's blanket impl for async functions does, but
//! with each trait path spanned at the argument or return type: a wrong type
//! is then one error at that type (delegating to the blanket impl would add
//! two more errors at the attribute).

use proc_macro2::TokenStream;
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Attribute, FnArg, Ident, ItemFn, ReturnType, Signature, Type};

use crate::attr::{self, Args};

/// Expands `#[handler(args)] item`. On any error, emits `item` unchanged next
/// to the `compile_error!`s, so that nothing else fails because of it.
pub(crate) fn handler(args: TokenStream, item: TokenStream) -> TokenStream {
    let func = match syn::parse2::<ItemFn>(item.clone()) {
        Ok(func) => func,
        Err(_) => {
            let e = syn::Error::new_spanned(&item, "`#[handler]` goes on an `async fn`");
            return with_error(item, e);
        }
    };
    match (attr::parse(args), check(&func.sig)) {
        (Ok(args), Ok(())) => generate(&args, func),
        (args, sig) => {
            let error = attr::join(args.err().into_iter().chain(sig.err()));
            with_error(item, error.expect("one of them failed"))
        }
    }
}

/// `item` as written, followed by the `compile_error!`s for `error`.
fn with_error(item: TokenStream, error: syn::Error) -> TokenStream {
    let error = error.into_compile_error();
    quote!(#item #error)
}

/// Rejects what cannot be a handler, each at the offending token.
fn check(sig: &Signature) -> syn::Result<()> {
    let mut errors = Vec::new();
    let mut reject = |tokens: &dyn ToTokens, msg: &str| errors.push(syn::Error::new_spanned(tokens, msg));
    if sig.asyncness.is_none() {
        reject(&sig.fn_token, "`#[handler]` requires an `async fn`; add `async` before `fn`");
    }
    if let Some(unsafety) = &sig.unsafety {
        reject(unsafety, "`#[handler]` functions cannot be `unsafe`");
    }
    if let Some(abi) = &sig.abi {
        reject(abi, "`#[handler]` functions cannot have an `extern` ABI");
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        reject(
            &sig.generics,
            "`#[handler]` functions cannot have generic parameters: a handler's argument and return types must be concrete",
        );
    }
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) => reject(
                receiver,
                "`#[handler]` goes on a free `async fn`, not on a method: `self` cannot be taken from a record",
            ),
            FnArg::Typed(arg) if matches!(*arg.ty, Type::ImplTrait(_)) => reject(
                &arg.ty,
                "`#[handler]` functions cannot have `impl Trait` arguments (generic parameters): name the extractor type",
            ),
            FnArg::Typed(_) => {}
        }
    }
    match attr::join(errors) {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Generates the struct, its `handle` function and its `Handler` impl.
fn generate(args: &Args, func: ItemFn) -> TokenStream {
    let ItemFn { attrs, vis, mut sig, block } = func;
    let name = sig.ident.clone();
    sig.ident = Ident::new("handle", name.span());

    // Docs describe both the type and `handle`; `#[cfg]` must remove everything.
    let type_attrs: Vec<&Attribute> =
        attrs.iter().filter(|a| a.path().is_ident("doc") || a.path().is_ident("cfg")).collect();
    let cfgs: Vec<&Attribute> = attrs.iter().filter(|a| a.path().is_ident("cfg")).collect();

    let Args { topics, group, event_id, krate } = args;
    let event_id = match event_id {
        None => quote!(::core::option::Option::None),
        Some(attr::EventId::Field(f)) => {
            quote!(::core::option::Option::Some(#krate::__private::EventIdDecl::Field(#f)))
        }
        Some(attr::EventId::Header(h)) => {
            quote!(::core::option::Option::Some(#krate::__private::EventIdDecl::Header(#h)))
        }
    };
    let arg_types: Vec<&Type> = sig
        .inputs
        .iter()
        .filter_map(|input| match input {
            FnArg::Typed(arg) => Some(&*arg.ty),
            FnArg::Receiver(_) => None,
        })
        .collect();
    let tuple = quote!((#(#arg_types,)*));
    let vars: Vec<Ident> = (0..arg_types.len()).map(|i| format_ident!("__arg{i}")).collect();
    // Spanned at the argument's type: a non-extractor fails there, once.
    let extract =
        arg_types.iter().map(|ty| quote_spanned!(ty.span()=> <#ty as #krate::extract::FromRecord>::from_record));
    let reads_headers =
        arg_types.iter().map(|ty| quote_spanned!(ty.span()=> <#ty as #krate::extract::FromRecord>::__READS_HEADERS));
    let record_mut = (!vars.is_empty()).then(|| quote!(mut));
    // Spanned at the return type: a non-outcome fails there, once.
    let into_outcome = match &sig.output {
        ReturnType::Type(_, ty) => quote_spanned!(ty.span()=> <#ty as #krate::IntoOutcome>::into_outcome),
        ReturnType::Default => quote!(<() as #krate::IntoOutcome>::into_outcome),
    };

    quote! {
        #(#type_attrs)*
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug)]
        #vis struct #name;

        #(#cfgs)*
        impl #name {
            #(#attrs)*
            #vis #sig #block
        }

        #(#cfgs)*
        impl #krate::Handler<#tuple> for #name {
            type Future = #krate::__private::BoxHandlerFuture;

            fn call(self, #record_mut record: #krate::Record) -> Self::Future {
                #(
                    let #vars = match #extract(&mut record) {
                        ::core::result::Result::Ok(value) => value,
                        ::core::result::Result::Err(error) => {
                            return ::std::boxed::Box::pin(::core::future::ready(::core::result::Result::Err(error)));
                        }
                    };
                )*
                let future = Self::handle(#(#vars),*);
                ::std::boxed::Box::pin(async move { #into_outcome(future.await) })
            }

            fn __call_boxed(self, record: #krate::Record) -> #krate::__private::BoxHandlerFuture {
                #krate::Handler::<#tuple>::call(self, record)
            }

            fn __reads_headers(&self) -> bool {
                false #(|| #reads_headers)*
            }

            fn __subscription(&self) -> ::core::option::Option<#krate::__private::Subscription> {
                ::core::option::Option::Some(#krate::__private::Subscription {
                    topics: &[#(#topics),*],
                    group: ::core::option::Option::Some(#group),
                    event_id: #event_id,
                })
            }
        }
    }
}
