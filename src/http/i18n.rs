//! Interface languages: French first, English available. The language comes from the
//! `lang` cookie (set by the language switch), else the browser's `Accept-Language`, else
//! the configured default.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};

use crate::app::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Fr,
    En,
}

impl Lang {
    pub fn code(self) -> &'static str {
        match self {
            Lang::Fr => "fr",
            Lang::En => "en",
        }
    }

    pub fn parse(code: &str) -> Option<Lang> {
        match code {
            "fr" => Some(Lang::Fr),
            "en" => Some(Lang::En),
            _ => None,
        }
    }

    pub fn other(self) -> Lang {
        match self {
            Lang::Fr => Lang::En,
            Lang::En => Lang::Fr,
        }
    }

    /// The text for `key` in this language.
    pub fn t(self, key: &str) -> &'static str {
        self.try_t(key).unwrap_or_else(|| {
            tracing::warn!(key, "missing interface text");
            "…"
        })
    }

    /// The text for `key`, if the catalogue has it.
    pub fn try_t(self, key: &str) -> Option<&'static str> {
        TEXTS
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, fr, en)| match self {
                Lang::Fr => *fr,
                Lang::En => *en,
            })
    }
}

impl Lang {
    /// The `lang` cookie, else the first of `Accept-Language` we speak, else `default`.
    pub fn from_headers(headers: &HeaderMap, default: Lang) -> Lang {
        if let Some(l) = crate::auth::cookie(headers, "lang").and_then(Lang::parse) {
            return l;
        }
        headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .into_iter()
            .flat_map(|accept| accept.split(','))
            .filter_map(|item| {
                let code = item.split(';').next().unwrap_or("").trim();
                Lang::parse(code.get(..2).unwrap_or(""))
            })
            .next()
            .unwrap_or(default)
    }
}

impl FromRequestParts<AppState> for Lang {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let default = Lang::parse(&state.config.default_lang).unwrap_or(Lang::Fr);
        Ok(Lang::from_headers(&parts.headers, default))
    }
}

/// (key, French, English)
const TEXTS: &[(&str, &str, &str)] = &[
    ("app.name", "CEREDIS Edge", "CEREDIS Edge"),
    ("nav.logout", "Se déconnecter", "Sign out"),
    ("apps.title", "Applications", "Apps"),
    (
        "apps.admin_title",
        "Applications de l'établissement",
        "The school's apps",
    ),
    (
        "apps.installed",
        "Applications installées",
        "Installed apps",
    ),
    (
        "apps.none",
        "Aucune application n'est installée.",
        "No app is installed.",
    ),
    ("apps.hash", "Empreinte SHA-256", "SHA-256 hash"),
    ("apps.roles", "Proposée à", "Offered to"),
    (
        "apps.remove",
        "Désinstaller (et effacer ses données)",
        "Remove (and erase its data)",
    ),
    (
        "apps.add",
        "Installer ou mettre à jour une application",
        "Install or upgrade an app",
    ),
    (
        "apps.add_help",
        "Envoyez le manifeste (ceredis-app.toml) et le composant WebAssembly (.wasm) de l'application. Vous verrez ensuite ce qu'elle demande avant de l'accorder.",
        "Upload the app's manifest (ceredis-app.toml) and its WebAssembly component (.wasm). You will then see what it asks for before granting it.",
    ),
    ("apps.manifest", "Manifeste", "Manifest"),
    ("apps.component", "Composant", "Component"),
    ("apps.review", "Examiner", "Review"),
    (
        "apps.review_title",
        "Ce que demande l'application",
        "What the app asks for",
    ),
    (
        "apps.requested",
        "Capacités demandées : cochez celles que vous accordez",
        "Capabilities requested: tick those you grant",
    ),
    (
        "apps.no_grant",
        "Aucune capacité : l'application ne peut qu'afficher des pages.",
        "No capability: the app can only show pages.",
    ),
    ("apps.quotas", "Limites par requête", "Limits per request"),
    (
        "apps.install",
        "Installer avec ces capacités",
        "Install with these capabilities",
    ),
    ("apps.upgrade", "Mise à jour", "Upgrade"),
    ("apps.upgraded", "Application mise à jour", "App upgraded"),
    (
        "apps.installed_one",
        "Application installée",
        "App installed",
    ),
    ("apps.removed", "Application désinstallée", "App removed"),
    ("apps.history", "Historique", "History"),
    ("apps.when", "Date", "When"),
    ("apps.action", "Action", "Action"),
    ("apps.granted", "Capacités accordées", "Granted"),
    ("nav.home", "Accueil", "Home"),
    ("nav.switch_lang", "English", "Français"),
    (
        "nav.ca",
        "Certificat de l'établissement",
        "Site certificate",
    ),
    (
        "landing.title",
        "Choisissez votre établissement",
        "Choose your school",
    ),
    (
        "landing.none",
        "Aucun établissement n'est encore ouvert sur cet appareil.",
        "No school has been opened on this appliance yet.",
    ),
    (
        "landing.operator",
        "Console de l'opérateur",
        "Operator console",
    ),
    ("login.title", "Connexion", "Sign in"),
    ("login.username", "Identifiant", "User name"),
    ("login.password", "Mot de passe", "Password"),
    ("login.submit", "Se connecter", "Sign in"),
    (
        "login.failed",
        "Identifiant ou mot de passe incorrect.",
        "Wrong user name or password.",
    ),
    (
        "login.wait",
        "Trop de tentatives : réessayez dans quelques secondes.",
        "Too many attempts: try again in a few seconds.",
    ),
    (
        "password.title",
        "Choisissez votre mot de passe",
        "Choose your password",
    ),
    (
        "password.current",
        "Mot de passe actuel",
        "Current password",
    ),
    (
        "password.wrong_current",
        "Le mot de passe actuel est incorrect.",
        "The current password is wrong.",
    ),
    ("password.new", "Nouveau mot de passe", "New password"),
    (
        "password.confirm",
        "Confirmez le mot de passe",
        "Confirm the password",
    ),
    ("password.submit", "Enregistrer", "Save"),
    (
        "password.mismatch",
        "Les deux mots de passe sont différents.",
        "The two passwords differ.",
    ),
    (
        "password.hint",
        "Au moins 10 caractères. Une phrase facile à retenir convient très bien.",
        "At least 10 characters. A phrase you can remember works well.",
    ),
    ("setup.title", "Première mise en service", "First boot"),
    (
        "setup.intro",
        "Créez le compte de l'opérateur de cet appareil. Ce lien ne fonctionne qu'une fois.",
        "Create the operator account of this appliance. This link works only once.",
    ),
    (
        "setup.tenant_title",
        "Ouverture de l'établissement",
        "Opening the school's space",
    ),
    (
        "setup.tenant_intro",
        "Créez le premier compte administrateur de l'établissement. Ce lien ne fonctionne qu'une fois.",
        "Create the school's first administrator account. This link works only once.",
    ),
    ("setup.given_name", "Prénom", "Given name"),
    ("setup.family_name", "Nom", "Family name"),
    ("setup.submit", "Créer le compte", "Create the account"),
    (
        "setup.used",
        "Ce lien a déjà servi. Connectez-vous avec le compte créé.",
        "This link has already been used. Sign in with the account it created.",
    ),
    (
        "setup.expired",
        "Ce lien a expiré. Demandez-en un nouveau à l'opérateur (ceredis init --new-setup-link).",
        "This link has expired. Ask the operator for a new one (ceredis init --new-setup-link).",
    ),
    (
        "setup.unknown",
        "Ce lien n'est pas valide.",
        "This link is not valid.",
    ),
    (
        "operator.title",
        "Console de l'opérateur",
        "Operator console",
    ),
    ("operator.tenants", "Établissements", "Schools"),
    (
        "operator.create",
        "Ouvrir un établissement",
        "Open a school",
    ),
    (
        "operator.slug",
        "Nom court (dans l'adresse)",
        "Short name (in the address)",
    ),
    ("operator.name", "Nom complet", "Full name"),
    ("operator.suspend", "Suspendre", "Suspend"),
    ("operator.resume", "Réactiver", "Resume"),
    ("operator.health", "État de l'appareil", "Appliance health"),
    ("operator.site", "Identité du site", "Site identity"),
    ("federation.title", "Fédération", "Federation"),
    ("continuity.title", "Copie de continuité", "Continuity copy"),
    (
        "continuity.what",
        "Une copie chiffrée des données de l'établissement est déposée sur le hub de la fédération. Le hub ne peut pas la lire : seule la clé de récupération, affichée une fois à l'activation, permet de restaurer l'établissement sur un nouvel appareil.",
        "An encrypted copy of the school's data is kept at the federation hub. The hub cannot read it: only the recovery key, shown once when the copy is turned on, restores the school on a new appliance.",
    ),
    (
        "continuity.not_joined",
        "Ce site n'a pas encore rejoint de hub : la copie partira quand l'opérateur l'aura fait.",
        "This site has not joined a hub yet: the copy leaves once the operator has done so.",
    ),
    (
        "continuity.enable",
        "Activer la copie de continuité",
        "Turn the continuity copy on",
    ),
    (
        "continuity.key_title",
        "Clé de récupération — notez-la maintenant",
        "Recovery key — write it down now",
    ),
    (
        "continuity.key_help",
        "Elle ne sera plus jamais affichée. Imprimez-la et rangez-la hors ligne, en lieu sûr : sans elle, personne, pas même le hub, ne peut restaurer l'établissement.",
        "It will never be shown again. Print it and keep it offline, somewhere safe: without it nobody, not even the hub, can restore the school.",
    ),
    (
        "continuity.already",
        "La copie de continuité est déjà activée ; sa clé a été affichée à l'activation.",
        "The continuity copy is already on; its key was shown when it was turned on.",
    ),
    (
        "federation.not_joined",
        "Ce site n'a rejoint aucun hub de fédération. Avec un jeton de l'opérateur du hub : ceredis federation join <adresse du hub> <jeton>",
        "This site has not joined a federation hub. With a token from the hub's operator: ceredis federation join <hub address> <token>",
    ),
    ("federation.hub", "Hub", "Hub"),
    ("federation.joined", "rejoint le", "joined"),
    (
        "federation.continuity",
        "Copies de continuité (chiffrées, illisibles par le hub)",
        "Continuity copies (encrypted, unreadable by the hub)",
    ),
    (
        "federation.none",
        "Aucun établissement n'a activé sa copie de continuité : ceredis federation enable --tenant <nom>",
        "No school has enabled its continuity copy: ceredis federation enable --tenant <name>",
    ),
    ("federation.generation", "Génération", "Generation"),
    (
        "federation.last_success",
        "Dernier envoi réussi",
        "Last successful push",
    ),
    (
        "federation.transfer",
        "Envoi en cours",
        "Transfer under way",
    ),
    ("federation.last_error", "Dernière erreur", "Last error"),
    ("federation.never", "jamais", "never"),
    (
        "operator.setup_link",
        "Lien à transmettre à l'administrateur de l'établissement (valable 7 jours, une seule fois) :",
        "Link for the school's administrator (valid 7 days, once):",
    ),
    ("operator.role", "Opérateur", "Operator"),
    (
        "operator.no_data",
        "L'opérateur gère l'appareil ; il ne voit pas les données des établissements.",
        "The operator runs the appliance; it does not see the schools' data.",
    ),
    ("status.active", "actif", "active"),
    ("status.suspended", "suspendu", "suspended"),
    ("role.admin", "Administrateur", "Administrator"),
    ("role.teacher", "Enseignant", "Teacher"),
    ("role.student", "Élève", "Student"),
    ("role.researcher", "Chercheur", "Researcher"),
    ("admin.title", "Administration", "Administration"),
    ("admin.users", "Utilisateurs", "Users"),
    ("admin.classes", "Classes", "Classes"),
    ("admin.add_user", "Ajouter un utilisateur", "Add a user"),
    ("admin.add_class", "Créer une classe", "Create a class"),
    (
        "admin.enrol",
        "Inscrire dans une classe",
        "Enrol in a class",
    ),
    ("admin.role", "Rôle", "Role"),
    ("admin.class", "Classe", "Class"),
    ("admin.title_field", "Intitulé", "Title"),
    (
        "admin.reset",
        "Nouveau mot de passe provisoire",
        "New one-time password",
    ),
    (
        "admin.otp",
        "Mot de passe provisoire (à usage unique, affiché une seule fois) :",
        "One-time password (shown once only):",
    ),
    (
        "admin.roster",
        "Importer un annuaire OneRoster",
        "Import a OneRoster roster",
    ),
    ("admin.credentials", "Identifiants d'API", "API credentials"),
    (
        "admin.no_password",
        "pas encore de mot de passe",
        "no password yet",
    ),
    (
        "roster.files",
        "Fichiers CSV OneRoster 1.1 (orgs, users, classes, enrollments)",
        "OneRoster 1.1 CSV files (orgs, users, classes, enrollments)",
    ),
    (
        "roster.dry_run",
        "Simulation (ne rien enregistrer)",
        "Dry run (write nothing)",
    ),
    ("roster.submit", "Importer", "Import"),
    ("roster.progress", "Progression", "Progress"),
    ("roster.report", "Rapport", "Report"),
    (
        "roster.errors",
        "Erreurs (rien n'a été enregistré)",
        "Errors (nothing was written)",
    ),
    ("roster.done", "Import terminé.", "Import finished."),
    (
        "roster.dry_done",
        "Simulation terminée : rien n'a été enregistré.",
        "Dry run finished: nothing was written.",
    ),
    ("teacher.title", "Mes classes", "My classes"),
    (
        "teacher.none",
        "Vous n'avez encore aucune classe.",
        "You have no class yet.",
    ),
    ("teacher.pupils", "Élèves", "Pupils"),
    ("teacher.teachers", "Enseignants", "Teachers"),
    ("student.title", "Mon espace", "My space"),
    ("student.classes", "Mes classes", "My classes"),
    (
        "student.none",
        "Tu n'es inscrit dans aucune classe pour l'instant.",
        "You are not in any class yet.",
    ),
    ("browse.title", "Traces d'apprentissage", "Learning records"),
    (
        "browse.link",
        "Traces d'apprentissage (xAPI)",
        "Learning records (xAPI)",
    ),
    ("browse.pupil", "Élève", "Pupil"),
    ("browse.verb", "Action", "Verb"),
    ("browse.activity", "Activité", "Activity"),
    ("browse.from", "Du (UTC)", "From (UTC)"),
    ("browse.to", "Au (UTC)", "To (UTC)"),
    ("browse.all", "Tous", "All"),
    ("browse.filter", "Filtrer", "Filter"),
    ("browse.when", "Quand", "When"),
    ("browse.who", "Qui", "Who"),
    ("browse.result", "Résultat", "Result"),
    ("browse.json", "Déclaration complète", "Full statement"),
    (
        "browse.none",
        "Aucune trace ne correspond à ces filtres.",
        "No statement matches these filters.",
    ),
    ("browse.newest", "← Les plus récentes", "← Newest"),
    ("browse.older", "Plus anciennes →", "Older →"),
    ("browse.passed", "réussi", "passed"),
    ("browse.failed", "pas encore réussi", "not passed yet"),
    ("browse.completed", "terminé", "completed"),
    ("assess.link", "Évaluer la classe", "Assess the class"),
    ("assess.title", "Évaluation", "Assessment"),
    (
        "assess.record_title",
        "Observer la classe",
        "Observe the class",
    ),
    ("assess.descriptor", "Descripteur", "Descriptor"),
    ("assess.pupil", "Élève", "Pupil"),
    ("assess.rubric", "Observation", "Observation"),
    ("assess.comment", "Commentaire", "Comment"),
    (
        "assess.record",
        "Enregistrer les observations",
        "Record the observations",
    ),
    (
        "assess.recorded",
        "Observations enregistrées :",
        "Observations recorded:",
    ),
    ("assess.levels", "Niveaux décidés", "Decided levels"),
    ("rubric.not_yet", "Pas encore", "Not yet"),
    ("rubric.beginning", "Débutant", "Beginning"),
    ("rubric.achieved", "Acquis", "Achieved"),
    ("rubric.exceeded", "Dépassé", "Exceeded"),
    ("source.xapi", "Activité (xAPI)", "Activity (xAPI)"),
    ("source.observation", "Observation", "Observation"),
    ("source.self", "Auto-évaluation", "Self-assessment"),
    ("kind.record", "relevé", "record"),
    ("kind.correction", "correction", "correction"),
    ("kind.withdrawal", "retrait", "withdrawal"),
    ("pupil.decided", "Niveau décidé :", "Level decided:"),
    (
        "pupil.no_levels",
        "Aucun niveau n'est encore décidé.",
        "No level decided yet.",
    ),
    ("pupil.decide", "Décider un niveau", "Decide a level"),
    (
        "pupil.suggestions",
        "Suggestions (modèle)",
        "Suggestions (model)",
    ),
    (
        "pupil.suggestions_hint",
        "Une suggestion n'est pas une décision : vous seul décidez, en citant des preuves.",
        "A suggestion is not a decision: you alone decide, citing evidence.",
    ),
    (
        "pupil.use_suggestion",
        "Partir de cette suggestion",
        "Start from this suggestion",
    ),
    (
        "pupil.decide_submit",
        "Décider le niveau",
        "Decide the level",
    ),
    ("pupil.skill", "Compétence", "Skill"),
    ("pupil.level", "Niveau", "Level"),
    ("pupil.justification", "Justification", "Justification"),
    ("pupil.cite", "Preuves citées", "Evidence cited"),
    (
        "pupil.no_evidence",
        "Aucune preuve pour l'instant.",
        "No evidence yet.",
    ),
    (
        "pupil.estimates",
        "Estimations de maîtrise",
        "Mastery estimates",
    ),
    ("pupil.estimate", "Estimation", "Estimate"),
    ("pupil.count", "Preuves", "Evidence"),
    ("pupil.evidence", "Preuves", "Evidence"),
    ("pupil.date", "Date", "Date"),
    ("pupil.source", "Source", "Source"),
    ("pupil.value", "Résultat", "Result"),
    ("progress.link", "Mes compétences", "My skills"),
    ("progress.title", "Mes compétences", "My skills"),
    ("progress.level", "Mon niveau", "My level"),
    (
        "progress.no_level",
        "Ton professeur n'a pas encore décidé de niveau.",
        "Your teacher has not decided a level yet.",
    ),
    ("status.reached", "Acquis", "Reached"),
    ("status.working_on", "En cours", "Working on"),
    ("status.not_started", "Pas encore", "Not yet"),
    (
        "researcher.none",
        "Vous ne participez encore à aucun projet de recherche de l'établissement.",
        "You are not part of any research project of this school yet.",
    ),
    (
        "researcher.pupils",
        "Export par élève et compétence (CSV pour R)",
        "Export by pupil and skill (CSV for R)",
    ),
    (
        "researcher.distribution",
        "Répartition des niveaux (CSV, petites cases masquées)",
        "Level distribution (CSV, small cells suppressed)",
    ),
    ("dash.title", "Tableau de bord", "Dashboard"),
    ("dash.link", "Tableau de bord", "Dashboard"),
    (
        "dash.school_link",
        "Tableau de bord de l'établissement",
        "School dashboard",
    ),
    (
        "dash.levels",
        "Niveaux décidés par compétence",
        "Decided levels per skill",
    ),
    ("dash.undecided", "non décidé", "not decided"),
    ("dash.weekly", "Preuves par semaine", "Evidence per week"),
    ("dash.week", "Semaine du", "Week of"),
    ("dash.evidence", "Preuves", "Evidence"),
    ("dash.mean", "Résultat moyen", "Mean result"),
    ("dash.pupils", "Élèves", "Pupils"),
    (
        "dash.coverage",
        "Couverture : élèves ayant des preuves",
        "Coverage: pupils with evidence",
    ),
    ("dash.covered", "Élèves couverts", "Pupils covered"),
    (
        "researcher.for_r",
        "Depuis R, avec votre session :",
        "From R, with your session:",
    ),
    ("researcher.export_title", "Export", "Export"),
    (
        "researcher.reading",
        "Lecture des élèves…",
        "Reading the pupils…",
    ),
    (
        "researcher.ready",
        "L'export a passé le contrôle de confidentialité.",
        "The export passed the privacy gate.",
    ),
    (
        "researcher.download",
        "Télécharger le CSV",
        "Download the CSV",
    ),
    (
        "researcher.back",
        "Retour aux projets",
        "Back to the projects",
    ),
    ("history.title", "Mon activité", "My activity"),
    ("history.link", "Mon activité", "My activity"),
    ("history.me", "Moi", "Me"),
    (
        "history.none",
        "Rien d'enregistré pour l'instant : tes activités apparaîtront ici.",
        "Nothing recorded yet: your activities will appear here.",
    ),
    ("researcher.title", "Espace recherche", "Research space"),
    (
        "researcher.intro",
        "Les exports de vos projets de recherche : élèves pseudonymisés par projet, aucun identifiant direct, quasi-identifiants généralisés jusqu'à k élèves au moins par groupe. Chaque export est journalisé.",
        "The exports of your research projects: pupils under a per-project pseudonym, no direct identifier, quasi-identifiers generalised until every group has at least k pupils. Every export is journaled.",
    ),
    (
        "error.title",
        "Une erreur est survenue",
        "Something went wrong",
    ),
    ("error.back", "Retour à l'accueil", "Back to the home page"),
    (
        "error.not_found",
        "Cette page n'existe pas, ou vous n'y avez pas accès.",
        "This page does not exist, or you have no access to it.",
    ),
    (
        "error.role_forbidden",
        "Votre rôle ne donne pas accès à cette page.",
        "Your role does not give access to this page.",
    ),
    (
        "error.operator_no_tenant_data",
        "L'opérateur de l'appareil ne peut pas lire les données d'un établissement.",
        "The appliance operator cannot read a school's data.",
    ),
    (
        "error.operator_only",
        "Seul l'opérateur de l'appareil peut faire cela.",
        "Only the appliance operator can do this.",
    ),
    (
        "error.csrf_failed",
        "Le formulaire a expiré ou ne vient pas de ce site : rechargez la page et recommencez.",
        "The form has expired or did not come from this site: reload the page and try again.",
    ),
    (
        "error.cross_origin",
        "Cette demande venait d'un autre site : elle a été refusée.",
        "This request came from another site and was refused.",
    ),
    (
        "error.tenant_suspended",
        "L'espace de cet établissement est suspendu : contactez l'opérateur de l'appareil.",
        "This school's space is suspended: contact the appliance operator.",
    ),
    (
        "error.too_many_attempts",
        "Trop de tentatives : réessayez dans quelques secondes.",
        "Too many attempts: try again in a few seconds.",
    ),
    (
        "error.internal",
        "Un problème est survenu sur l'appareil ; l'opérateur en trouvera le détail dans son journal.",
        "Something went wrong on the appliance; the operator can find the details in its log.",
    ),
    (
        "error.body_too_large",
        "L'envoi est plus gros que ce que l'appareil accepte.",
        "The upload is larger than this appliance accepts.",
    ),
    (
        "cred.label",
        "Nom de l'application cliente",
        "Client application name",
    ),
    ("cred.scopes", "Droits", "Scopes"),
    (
        "cred.create",
        "Créer l'identifiant",
        "Create the credential",
    ),
    (
        "cred.secret",
        "Secret (affiché une seule fois) :",
        "Secret (shown once only):",
    ),
    ("cred.revoke", "Révoquer", "Revoke"),
    (
        "cred.endpoint",
        "Point d'accès xAPI (LRS) de l'établissement :",
        "The school's xAPI endpoint (LRS):",
    ),
    ("cred.revoked", "révoqué", "revoked"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_text_exists_in_both_languages_and_keys_are_unique() {
        let mut keys = std::collections::HashSet::new();
        for (k, fr, en) in TEXTS {
            assert!(keys.insert(*k), "duplicate key {k}");
            assert!(!fr.is_empty() && !en.is_empty(), "{k}");
        }
        assert_eq!(Lang::Fr.t("login.title"), "Connexion");
        assert_eq!(Lang::En.t("login.title"), "Sign in");
    }

    #[test]
    fn every_key_the_pages_use_is_in_the_catalogue() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/http");
        let mut used = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            for piece in text.split(".t(\"").skip(1) {
                let key = piece.split('"').next().unwrap();
                assert!(Lang::Fr.try_t(key).is_some(), "missing text `{key}`");
                used += 1;
            }
        }
        assert!(used > 50, "{used} keys used");
    }
}
