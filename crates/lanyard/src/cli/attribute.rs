//! `lanyard attribute`: custom attribute definitions.

use anyhow::Result;
use clap::Subcommand;

use lanyard_core::attributes::{AttributeKind, DefineAttribute};
use lanyard_core::Actor;

use super::{print_list, OutputArgs};
use crate::setup::Opened;

#[derive(Debug, Subcommand)]
pub enum AttributeCmd {
    /// Define a custom attribute asked for during enrollment.
    Add {
        name: String,
        /// text, number, boolean or choice
        #[arg(long = "type")]
        kind: String,
        #[arg(long)]
        required: bool,
        /// An allowed value of a choice attribute (repeat the flag).
        #[arg(long = "choice")]
        choices: Vec<String>,
    },
    /// List custom attribute definitions.
    List {
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Remove a custom attribute definition.
    Remove { name: String },
}

pub async fn attribute(o: &Opened, cmd: AttributeCmd) -> Result<()> {
    let l = &o.lanyard;
    match cmd {
        AttributeCmd::Add {
            name,
            kind,
            required,
            choices,
        } => {
            let kind: AttributeKind = kind.parse()?;
            let a = l
                .define_attribute(
                    &Actor::cli(),
                    DefineAttribute {
                        name,
                        kind,
                        required,
                        choices,
                    },
                )
                .await?;
            println!("defined attribute {} ({})", a.name, a.kind.as_str());
        }
        AttributeCmd::List { out } => {
            let attrs = l.list_attributes().await?;
            print_list(&out, attrs, &["name", "type", "required", "choices"], |a| {
                vec![
                    a.name,
                    a.kind.as_str().into(),
                    if a.required { "yes" } else { "no" }.into(),
                    a.choices.join(", "),
                ]
            })?;
        }
        AttributeCmd::Remove { name } => {
            l.delete_attribute(&Actor::cli(), &name).await?;
            println!("removed attribute {name}");
        }
    }
    Ok(())
}
