//! `#[derive(Module)]`: the part of a ringtrain module that follows from its fields.
//!
//! For a struct whose fields are modules, `Var`s, `Buffer`s, `RngStream`s, or `Vec`s and
//! `Option`s of them, the derive implements `ModuleState`: `named_parameters`,
//! `named_buffers` and `named_rng_streams` list every field's under PyTorch's dotted
//! names (`blocks.0.attn.weight`: a `Vec` is a module list, numbered from 0; a `None` is
//! left out), and `set_training` reaches every field. The user writes `forward` in
//! `impl Module`. Field attributes:
//!
//! - `#[module(skip)]`: not part of the module's state (a hyper-parameter, a cache);
//! - `#[module(rename = "c_attn")]`: the name the field takes in parameter names;
//! - `#[module(flatten)]`: a module field's names without its own in front (a wrapper
//!   that keeps its inner module's names);
//! - `#[module(quantize)]`: a weight that products read (a linear layer's, a
//!   convolution's), which inference may store as int8, f16 or bf16
//!   (`named_quantizable`).
//!
//! The generated code names the library through the crate the user depends on
//! (`ringtrain` or `ringtrain-models`, however renamed), found in the user's Cargo.toml.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use proc_macro_crate::{crate_name, FoundCrate};
use quote::{format_ident, quote};
use syn::{parse_macro_input, Data, DeriveInput, Fields, LitStr};

#[proc_macro_derive(Module, attributes(module))]
pub fn derive_module(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// One field that takes part in the module's state.
struct Field {
    access: TokenStream2,
    name: String,
    ty: syn::Type,
    quantize: bool,
}

fn expand(input: DeriveInput) -> syn::Result<TokenStream2> {
    let nn = library_path();
    let fields = state_fields(&input)?;
    let ident = &input.ident;
    let mut generics = input.generics.clone();
    {
        let where_clause = generics.make_where_clause();
        for f in &fields {
            let ty = &f.ty;
            where_clause
                .predicates
                .push(syn::parse_quote!(#ty: #nn::ModuleField));
        }
    }
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let collect = |method: &str| {
        let method = format_ident!("{method}");
        let calls = fields.iter().map(|f| {
            let (access, name) = (&f.access, &f.name);
            quote! { #nn::ModuleField::#method(&self.#access, #name, &mut out); }
        });
        quote! {
            let mut out = ::std::vec::Vec::new();
            #(#calls)*
            out
        }
    };
    let parameters = collect("collect_parameters");
    let buffers = collect("collect_buffers");
    let streams = collect("collect_rng_streams");
    let quantizable = fields.iter().map(|f| {
        let (access, name) = (&f.access, &f.name);
        if f.quantize {
            quote! { #nn::ModuleField::collect_parameters(&self.#access, #name, &mut out); }
        } else {
            quote! { #nn::ModuleField::collect_quantizable(&self.#access, #name, &mut out); }
        }
    });
    let set_training = fields.iter().map(|f| {
        let access = &f.access;
        quote! { #nn::ModuleField::set_training(&self.#access, training); }
    });
    Ok(quote! {
        impl #impl_generics #nn::ModuleState for #ident #ty_generics #where_clause {
            fn named_parameters(&self) -> ::std::vec::Vec<(::std::string::String, #nn::Var)> {
                #parameters
            }
            fn named_buffers(&self) -> ::std::vec::Vec<(::std::string::String, #nn::Buffer)> {
                #buffers
            }
            fn named_rng_streams(
                &self,
            ) -> ::std::vec::Vec<(::std::string::String, #nn::RngStream)> {
                #streams
            }
            fn named_quantizable(&self) -> ::std::vec::Vec<(::std::string::String, #nn::Var)> {
                let mut out = ::std::vec::Vec::new();
                #(#quantizable)*
                out
            }
            #[allow(unused_variables)]
            fn set_training(&self, training: bool) {
                #(#set_training)*
            }
        }
    })
}

/// The fields that are part of the state, with their names, in declaration order.
fn state_fields(input: &DeriveInput) -> syn::Result<Vec<Field>> {
    let Data::Struct(data) = &input.data else {
        return Err(syn::Error::new_spanned(
            &input.ident,
            "#[derive(Module)] needs a struct (an enum or union has no fixed fields to \
             name parameters after); implement ModuleState by hand",
        ));
    };
    let mut out = Vec::new();
    let fields: Vec<&syn::Field> = match &data.fields {
        Fields::Named(f) => f.named.iter().collect(),
        Fields::Unnamed(f) => f.unnamed.iter().collect(),
        Fields::Unit => Vec::new(),
    };
    for (i, field) in fields.into_iter().enumerate() {
        let mut skip = false;
        let mut rename = None;
        let mut flatten = false;
        let mut quantize = false;
        for attr in field.attrs.iter().filter(|a| a.path().is_ident("module")) {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("skip") {
                    skip = true;
                    Ok(())
                } else if meta.path.is_ident("rename") {
                    let name: LitStr = meta.value()?.parse()?;
                    if name.value().is_empty() || name.value().contains('.') {
                        return Err(meta.error("a name is not empty and holds no `.`"));
                    }
                    rename = Some(name.value());
                    Ok(())
                } else if meta.path.is_ident("flatten") {
                    flatten = true;
                    Ok(())
                } else if meta.path.is_ident("quantize") {
                    quantize = true;
                    Ok(())
                } else {
                    Err(meta.error(
                        "expected #[module(skip)], #[module(rename = \"...\")], \
                         #[module(flatten)] or #[module(quantize)]",
                    ))
                }
            })?;
        }
        if skip {
            continue;
        }
        if flatten && rename.is_some() {
            return Err(syn::Error::new_spanned(
                field,
                "a flattened field has no name of its own to rename",
            ));
        }
        let (access, own_name) = match &field.ident {
            Some(ident) => (quote!(#ident), ident.to_string()),
            None => {
                let index = syn::Index::from(i);
                (quote!(#index), i.to_string())
            }
        };
        // A raw identifier (`r#type`) is named without its prefix, as PyTorch would.
        let own_name = own_name.trim_start_matches("r#").to_string();
        out.push(Field {
            access,
            name: if flatten {
                String::new()
            } else {
                rename.unwrap_or(own_name)
            },
            ty: field.ty.clone(),
            quantize,
        });
    }
    Ok(out)
}

/// `::ringtrain::nn` or `::ringtrain_models::nn` (or the user's name for either).
fn library_path() -> TokenStream2 {
    let found = |name: &str| match crate_name(name) {
        // Inside ringtrain-models itself (and its tests), which names itself so.
        Ok(FoundCrate::Itself) => Some(format_ident!("{}", name.replace('-', "_"))),
        Ok(FoundCrate::Name(n)) => Some(syn::Ident::new(&n, Span::call_site())),
        Err(_) => None,
    };
    let root = found("ringtrain-models")
        .or_else(|| found("ringtrain"))
        .unwrap_or_else(|| format_ident!("ringtrain"));
    quote!(::#root::nn)
}
