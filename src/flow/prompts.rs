//! Every sentence the calls speak, in one place: the file name Asterisk plays (from
//! `sounds/<lang>/`, picked by the channel's language) and the text a voice talent or a
//! text-to-speech script records for each language.

/// A prompt the flows play.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prompt {
    Greeting,
    PressPound,
    NotPound,
    NoAcknowledgement,
    EnterCode,
    /// When spoken codes are on: say it or key it.
    SayOrEnterCode,
    /// Spoken entry: nothing usable was heard.
    NotUnderstood,
    /// Spoken entry: "I heard", then the digits.
    YouSaid,
    /// Spoken entry: confirm a wrong code before it costs an attempt.
    ConfirmSpoken,
    /// Spoken entry given up on: the keypad.
    UseKeypad,
    /// Read-code mode: "press # to hear your code", then the code, twice, and the offer to
    /// say it again; then where to enter it.
    PressPoundForCode,
    YourCodeIs,
    CodeAgain,
    RepeatCode,
    EnterCodeOnPage,
    CodeIncorrect,
    Verified,
    LockedOut,
    NoInput,
    Expired,
    NotAvailable,
    TechnicalProblem,
    /// The QA line says the test code after this.
    TestCodeIs,
    SupportWelcome,
    SupportMenu,
    SupportClosed,
    SupportInstructions,
    SupportThanks,
    SupportNoMessage,
    SupportNoAgent,
    SupportFull,
    /// Asterisk's stock core sound.
    Goodbye,
}

/// Languages the catalogue has words for (and `asterisk/sounds/` ships recordings of).
pub use crate::domain::verification::LANGUAGES;

/// Asterisk's core sounds that `SAY DIGITS` plays when a call reads digits back.
pub const SAID_DIGITS: [&str; 10] = [
    "digits/0", "digits/1", "digits/2", "digits/3", "digits/4", "digits/5", "digits/6", "digits/7",
    "digits/8", "digits/9",
];

/// Every sound file a call can play, in each language: the prompts and the digits.
pub fn sound_files() -> impl Iterator<Item = &'static str> {
    Prompt::ALL.iter().map(|p| p.file()).chain(SAID_DIGITS)
}

impl Prompt {
    pub const ALL: &'static [Prompt] = &[
        Prompt::Greeting,
        Prompt::PressPound,
        Prompt::NotPound,
        Prompt::NoAcknowledgement,
        Prompt::EnterCode,
        Prompt::SayOrEnterCode,
        Prompt::NotUnderstood,
        Prompt::YouSaid,
        Prompt::ConfirmSpoken,
        Prompt::UseKeypad,
        Prompt::PressPoundForCode,
        Prompt::YourCodeIs,
        Prompt::CodeAgain,
        Prompt::RepeatCode,
        Prompt::EnterCodeOnPage,
        Prompt::CodeIncorrect,
        Prompt::Verified,
        Prompt::LockedOut,
        Prompt::NoInput,
        Prompt::Expired,
        Prompt::NotAvailable,
        Prompt::TechnicalProblem,
        Prompt::TestCodeIs,
        Prompt::SupportWelcome,
        Prompt::SupportMenu,
        Prompt::SupportClosed,
        Prompt::SupportInstructions,
        Prompt::SupportThanks,
        Prompt::SupportNoMessage,
        Prompt::SupportNoAgent,
        Prompt::SupportFull,
        Prompt::Goodbye,
    ];

    /// The name passed to STREAM FILE / GET DATA, without extension.
    pub fn file(self) -> &'static str {
        match self {
            Prompt::Greeting => "callverify/greeting",
            Prompt::PressPound => "callverify/press-pound",
            Prompt::NotPound => "callverify/not-pound",
            Prompt::NoAcknowledgement => "callverify/no-acknowledgement",
            Prompt::EnterCode => "callverify/enter-code",
            Prompt::SayOrEnterCode => "callverify/say-or-enter-code",
            Prompt::NotUnderstood => "callverify/not-understood",
            Prompt::YouSaid => "callverify/you-said",
            Prompt::ConfirmSpoken => "callverify/confirm-spoken",
            Prompt::UseKeypad => "callverify/use-keypad",
            Prompt::PressPoundForCode => "callverify/press-pound-for-code",
            Prompt::YourCodeIs => "callverify/your-code-is",
            Prompt::CodeAgain => "callverify/code-again",
            Prompt::RepeatCode => "callverify/repeat-code",
            Prompt::EnterCodeOnPage => "callverify/enter-code-on-page",
            Prompt::CodeIncorrect => "callverify/code-incorrect",
            Prompt::Verified => "callverify/verified",
            Prompt::LockedOut => "callverify/locked-out",
            Prompt::NoInput => "callverify/no-input",
            Prompt::Expired => "callverify/expired",
            Prompt::NotAvailable => "callverify/not-available",
            Prompt::TechnicalProblem => "callverify/technical-problem",
            Prompt::TestCodeIs => "callverify/test-code-is",
            Prompt::SupportWelcome => "callverify/support-welcome",
            Prompt::SupportMenu => "callverify/support-menu",
            Prompt::SupportClosed => "callverify/support-closed",
            Prompt::SupportInstructions => "callverify/support-instructions",
            Prompt::SupportThanks => "callverify/support-thanks",
            Prompt::SupportNoMessage => "callverify/support-no-message",
            Prompt::SupportNoAgent => "callverify/support-no-agent",
            Prompt::SupportFull => "callverify/support-full",
            Prompt::Goodbye => "goodbye",
        }
    }

    /// Asterisk's stock core sounds ship with Asterisk; the rest ship in `asterisk/sounds/`.
    pub fn is_core_sound(self) -> bool {
        !self.file().starts_with("callverify/")
    }

    /// The words of the prompt in `language` (`en`, `es`); English when there is no text for
    /// the language.
    pub fn text(self, language: &str) -> &'static str {
        let (en, es) = match self {
            Prompt::Greeting => (
                "Hello. This is an automated call to verify your phone number.",
                "Hola. Esta es una llamada automática para verificar su número de teléfono.",
            ),
            Prompt::PressPound => (
                "If you were expecting this call, please press the pound key.",
                "Si esperaba esta llamada, pulse la tecla numeral.",
            ),
            Prompt::NotPound => (
                "That was not the pound key.",
                "Esa no era la tecla numeral.",
            ),
            Prompt::NoAcknowledgement => (
                "We did not receive your confirmation. We will not verify your number on this call.",
                "No recibimos su confirmación. No verificaremos su número en esta llamada.",
            ),
            Prompt::EnterCode => (
                "Please enter the code shown on your screen, followed by the pound key.",
                "Introduzca el código que aparece en su pantalla, seguido de la tecla numeral.",
            ),
            Prompt::SayOrEnterCode => (
                "After the tone, say the code shown on your screen, slowly and clearly, one digit at a time. Or enter it on your keypad, followed by the pound key.",
                "Después del tono, diga el código que aparece en su pantalla, despacio y con claridad, dígito a dígito. O introdúzcalo con el teclado, seguido de la tecla numeral.",
            ),
            Prompt::NotUnderstood => (
                "Sorry, I did not catch that.",
                "Lo siento, no le he entendido.",
            ),
            Prompt::YouSaid => ("I heard", "He entendido"),
            Prompt::ConfirmSpoken => (
                "If that is the code you said, press 1. To say it again, press 2.",
                "Si ese es el código que dijo, pulse 1. Para repetirlo, pulse 2.",
            ),
            Prompt::UseKeypad => (
                "Please enter the code on your keypad, followed by the pound key.",
                "Introduzca el código con el teclado, seguido de la tecla numeral.",
            ),
            Prompt::PressPoundForCode => (
                "If you were expecting this call, press the pound key to hear your code.",
                "Si esperaba esta llamada, pulse la tecla numeral para escuchar su código.",
            ),
            Prompt::YourCodeIs => (
                "Your verification code is",
                "Su código de verificación es",
            ),
            Prompt::CodeAgain => ("Again, your code is", "Repito, su código es"),
            Prompt::RepeatCode => (
                "To hear the code again, press 1.",
                "Para escucharlo de nuevo, pulse 1.",
            ),
            Prompt::EnterCodeOnPage => (
                "Please enter this code on the web page.",
                "Introduzca este código en la página web.",
            ),
            Prompt::CodeIncorrect => (
                "That code is not correct.",
                "Ese código no es correcto.",
            ),
            Prompt::Verified => (
                "Thank you. Your phone number has been verified.",
                "Gracias. Su número de teléfono ha sido verificado.",
            ),
            Prompt::LockedOut => (
                "You have used all your attempts. You can try again after 24 hours.",
                "Ha agotado todos sus intentos. Puede volver a intentarlo dentro de 24 horas.",
            ),
            Prompt::NoInput => (
                "We did not receive a code. Please start the verification again from the web site.",
                "No recibimos ningún código. Inicie de nuevo la verificación desde el sitio web.",
            ),
            Prompt::Expired => (
                "This verification has expired. Please start again from the web site.",
                "Esta verificación ha caducado. Vuelva a empezar desde el sitio web.",
            ),
            Prompt::NotAvailable => (
                "There is no verification waiting for this call.",
                "No hay ninguna verificación pendiente para esta llamada.",
            ),
            Prompt::TechnicalProblem => (
                "We are sorry, we cannot verify your number right now because of a technical problem. Please try again later.",
                "Lo sentimos, no podemos verificar su número ahora por un problema técnico. Inténtelo más tarde.",
            ),
            Prompt::TestCodeIs => (
                "This is a test call. Your test code is",
                "Esta es una llamada de prueba. Su código de prueba es",
            ),
            Prompt::SupportWelcome => (
                "Thank you for calling phone verification support.",
                "Gracias por llamar al servicio de asistencia de verificación telefónica.",
            ),
            Prompt::SupportMenu => (
                "To speak with a member of our staff, press 1. To leave a message for manual verification, press 2.",
                "Para hablar con una persona de nuestro equipo, pulse 1. Para dejar un mensaje de verificación manual, pulse 2.",
            ),
            Prompt::SupportClosed => (
                "Our staff answer calls Monday to Friday, from 5 AM to 5 PM Pacific time. Messages are accepted 24 hours a day.",
                "Nuestro equipo atiende de lunes a viernes, de 5 de la mañana a 5 de la tarde, hora del Pacífico. Aceptamos mensajes las 24 horas.",
            ),
            Prompt::SupportInstructions => (
                "After the tone, say that you want your number verified. Then say your username, spell your username, and say your registered email address. Press the pound key when you are done.",
                "Después del tono, diga que quiere verificar su número. Luego diga su nombre de usuario, deletréelo y diga su correo electrónico registrado. Pulse la tecla numeral al terminar.",
            ),
            Prompt::SupportThanks => (
                "Thank you. Your message has been recorded. Our staff will verify your number. If it is not verified within 24 hours, please call again.",
                "Gracias. Su mensaje ha sido grabado. Nuestro equipo verificará su número. Si no está verificado en 24 horas, vuelva a llamar.",
            ),
            Prompt::SupportNoAgent => (
                "All of our staff are busy. Please leave a message.",
                "Todo nuestro equipo está ocupado. Por favor, deje un mensaje.",
            ),
            Prompt::SupportNoMessage => (
                "We did not hear a message.",
                "No hemos oído ningún mensaje.",
            ),
            Prompt::SupportFull => (
                "We cannot take another message right now. Please call again later.",
                "No podemos recibir otro mensaje en este momento. Vuelva a llamar más tarde.",
            ),
            Prompt::Goodbye => ("Goodbye.", "Adiós."),
        };
        if language.starts_with("es") {
            es
        } else {
            en
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_prompt_has_a_distinct_file_and_text() {
        let files: std::collections::HashSet<_> = Prompt::ALL.iter().map(|p| p.file()).collect();
        assert_eq!(files.len(), Prompt::ALL.len());
        for p in Prompt::ALL {
            assert!(!p.text("en").is_empty());
            assert_ne!(p.text("en"), p.text("es"), "{p:?}");
            assert_eq!(p.text("fr"), p.text("en"));
        }
    }
}
