//! `#[derive(Parameters)]`: a Sinapse module's parameters, collected from its fields.
//!
//! Each field is visited in order and its parameters named after it, as PyTorch names the
//! entries of a `state_dict`: a field `fc1` holding a `Linear` gives `fc1.weight` and
//! `fc1.bias`; a `Vec` of blocks gives `blocks.0.weight`, `blocks.1.weight`; a tuple struct's
//! fields are `0`, `1`, ... A field whose type holds no parameters (a size, a flag) gives
//! none; a field of a type that does not implement `Parameters` is marked
//! `#[parameters(skip)]`. Buffers (`sinapse::nn::Buffer` fields, and those of nested
//! modules) are visited the same way, by `visit_buffers`.

use proc_macro::TokenStream;
use quote::quote;
use syn::{parse_macro_input, Data, DeriveInput, Fields};

/// Implements `sinapse::nn::Parameters` for a struct by visiting its fields.
#[proc_macro_derive(Parameters, attributes(parameters))]
pub fn derive_parameters(input: TokenStream) -> TokenStream {
    let ast = parse_macro_input!(input as DeriveInput);
    match expand(&ast) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// True when a field carries `#[parameters(skip)]`.
fn skipped(attrs: &[syn::Attribute]) -> syn::Result<bool> {
    let mut skip = false;
    for attr in attrs.iter().filter(|a| a.path().is_ident("parameters")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("skip") {
                skip = true;
                Ok(())
            } else {
                Err(meta.error("expected `skip`"))
            }
        })?;
    }
    Ok(skip)
}

fn expand(ast: &DeriveInput) -> syn::Result<proc_macro2::TokenStream> {
    let Data::Struct(data) = &ast.data else {
        return Err(syn::Error::new_spanned(&ast.ident, "#[derive(Parameters)] is for structs"));
    };
    let mut visits = Vec::new();
    let mut buffer_visits = Vec::new();
    let fields: Vec<(syn::Member, String, &syn::Field)> = match &data.fields {
        Fields::Named(named) => named
            .named
            .iter()
            .map(|f| {
                let ident = f.ident.clone().expect("named field");
                let label = ident.to_string().trim_start_matches("r#").to_string();
                (syn::Member::Named(ident), label, f)
            })
            .collect(),
        Fields::Unnamed(unnamed) => unnamed
            .unnamed
            .iter()
            .enumerate()
            .map(|(i, f)| (syn::Member::Unnamed(syn::Index::from(i)), i.to_string(), f))
            .collect(),
        Fields::Unit => Vec::new(),
    };
    for (member, label, field) in fields {
        if skipped(&field.attrs)? {
            continue;
        }
        visits.push(quote! {
            ::sinapse::nn::Parameters::visit_parameters(
                &self.#member,
                &::sinapse::nn::join_name(prefix, #label),
                out,
            );
        });
        buffer_visits.push(quote! {
            ::sinapse::nn::Parameters::visit_buffers(
                &self.#member,
                &::sinapse::nn::join_name(prefix, #label),
                out,
            );
        });
    }
    let name = &ast.ident;
    // Every type parameter must hold parameters itself (`struct Wrap<M> { inner: M }`).
    let mut generics = ast.generics.clone();
    for param in generics.type_params_mut() {
        param.bounds.push(syn::parse_quote!(::sinapse::nn::Parameters));
    }
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    Ok(quote! {
        impl #impl_generics ::sinapse::nn::Parameters for #name #ty_generics #where_clause {
            fn visit_parameters(
                &self,
                prefix: &str,
                out: &mut ::std::vec::Vec<(::std::string::String, ::sinapse::Tensor)>,
            ) {
                let _ = (&prefix, &out);
                #(#visits)*
            }
            fn visit_buffers(
                &self,
                prefix: &str,
                out: &mut ::std::vec::Vec<(::std::string::String, ::sinapse::Tensor)>,
            ) {
                let _ = (&prefix, &out);
                #(#buffer_visits)*
            }
        }
    })
}
