//! `lanyard set`: declaration sets, their members and whom they are assigned to (a person,
//! every User Enrollment Mac, one enrollment), through the same domain calls as the admin API
//! and the portal; a member macOS User Enrollment does not allow is refused with the schema's
//! reason.

use anyhow::Result;
use clap::{Args, Subcommand};

use lanyard_core::declarations::{AssignTo, DeclarationService, SetView};
use lanyard_core::Actor;

use super::{print_json, print_list, OutputArgs};

#[derive(Debug, Subcommand)]
pub enum SetCmd {
    /// List declaration sets with their members and assignments.
    List {
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Show one set.
    Show {
        name: String,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Add a set.
    Add {
        /// 1 to 64 letters, digits, '.', '-' or '_'.
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Change a set's description.
    Update {
        name: String,
        #[arg(long)]
        description: String,
    },
    /// Remove a set with its assignments.
    Remove { name: String },
    /// Add a declaration to a set.
    AddMember { name: String, identifier: String },
    /// Remove a declaration from a set.
    RemoveMember { name: String, identifier: String },
    /// Assign a set. A member macOS User Enrollment does not allow is refused with the schema's
    /// reason.
    Assign {
        name: String,
        #[command(flatten)]
        to: TargetArgs,
    },
    /// Remove one of a set's assignments.
    Unassign {
        name: String,
        #[command(flatten)]
        to: TargetArgs,
    },
}

/// Exactly one target of an assignment.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct TargetArgs {
    /// A person, by email: every Mac they enroll.
    #[arg(long)]
    user: Option<String>,
    /// Every User Enrollment Mac.
    #[arg(long)]
    all_user_enrollments: bool,
    /// One enrollment, by id.
    #[arg(long)]
    enrollment: Option<String>,
}

impl TargetArgs {
    fn target(self) -> AssignTo {
        match (self.user, self.enrollment) {
            (Some(email), _) => AssignTo::User { email },
            (None, Some(id)) => AssignTo::Enrollment { id },
            (None, None) => AssignTo::AllUserEnrollments,
        }
    }
}

fn assignment_text(a: &AssignTo) -> String {
    match a {
        AssignTo::User { email } => format!("user {email}"),
        AssignTo::AllUserEnrollments => "all User Enrollment Macs".into(),
        AssignTo::Enrollment { id } => format!("enrollment {id}"),
    }
}

fn print_set(s: &SetView) {
    println!("name:          {}", s.name);
    println!("description:   {}", s.description);
    println!("members:       {}", s.members.join(", "));
    println!(
        "assigned to:   {}",
        s.assignments
            .iter()
            .map(assignment_text)
            .collect::<Vec<_>>()
            .join(", ")
    );
}

pub async fn set(svc: &DeclarationService, cmd: SetCmd) -> Result<()> {
    let actor = Actor::cli();
    let changed = |s: SetView, what: &str| {
        println!("set {}: {what}", s.name);
        print_set(&s);
    };
    match cmd {
        SetCmd::List { out } => {
            let sets = svc.list_sets().await?;
            print_list(
                &out,
                sets,
                &["name", "members", "assigned to", "description"],
                |s| {
                    vec![
                        s.name,
                        s.members.join(", "),
                        s.assignments
                            .iter()
                            .map(assignment_text)
                            .collect::<Vec<_>>()
                            .join(", "),
                        s.description,
                    ]
                },
            )?;
        }
        SetCmd::Show { name, out } => {
            let s = svc.set(&name).await?;
            if out.json {
                return print_json(&s);
            }
            print_set(&s);
        }
        SetCmd::Add { name, description } => {
            changed(svc.create_set(&actor, &name, &description).await?, "added")
        }
        SetCmd::Update { name, description } => {
            changed(svc.update_set(&actor, &name, &description).await?, "saved")
        }
        SetCmd::Remove { name } => {
            svc.delete_set(&actor, &name).await?;
            println!("removed set {name}");
        }
        SetCmd::AddMember { name, identifier } => changed(
            svc.add_to_set(&actor, &name, &identifier).await?,
            &format!("{identifier} added"),
        ),
        SetCmd::RemoveMember { name, identifier } => changed(
            svc.remove_from_set(&actor, &name, &identifier).await?,
            &format!("{identifier} removed"),
        ),
        SetCmd::Assign { name, to } => {
            let to = to.target();
            let text = assignment_text(&to);
            changed(
                svc.assign(&actor, &name, &to).await?,
                &format!("assigned to {text}"),
            )
        }
        SetCmd::Unassign { name, to } => {
            let to = to.target();
            let text = assignment_text(&to);
            changed(
                svc.unassign(&actor, &name, &to).await?,
                &format!("no longer assigned to {text}"),
            )
        }
    }
    Ok(())
}
