/// docs/configuration.md, written from the option table (`AgentOption`, `EnvironmentVariable`) so the document and
/// `--help` cannot disagree: `make docs` runs `sds-agent --help-markdown`, and a unit test fails when the committed
/// file differs from what this returns.
extension AgentCommandLine {
    public static var configurationMarkdown: String {
        var text = """
            # sds-agent configuration

            <!-- Generated from the option table (Sources/SDSAgent/Options.swift) by `make docs`; do not edit. -->

            Every option of `sds-agent run` is a flag and an environment variable (istio-agent's name where it has
            one): the flag wins, and an empty variable counts as unset. A bad flag or value stops the agent before it
            creates anything, with one line on stderr naming the flag, and exit code 2.

            \(sentence(AgentOption.durationSyntax)) \(sentence(AgentOption.sizeSyntax))

            Sections: \(AgentOption.Section.allCases.map(\.rawValue).joined(separator: "; ")).

            """
        for section in AgentOption.Section.allCases {
            text += "\n## \(section.rawValue)\n"
            for option in AgentOption.all where option.section == section {
                text += "\n### `\(option.flag) <\(option.valueName)>`\n\n\(markdown(option.help))\n\n"
                var environment = "`\(option.environment)`"
                if !option.alsoReads.isEmpty {
                    environment +=
                        "; the default also reads " + option.alsoReads.map { "`\($0.name)`" }.joined(separator: ", ")
                }
                text += "- Environment: \(environment)\n"
                text += "- Default: \(markdownDefault(option))\n"
                text += "- Value: \(markdown(option.syntaxText))\n"
            }
            let variables = EnvironmentVariable.all.filter { $0.section == section }
            if !variables.isEmpty {
                text += "\n### Environment only\n\n"
                for variable in variables { text += "- `\(variable.name)`: \(markdown(variable.help))\n" }
            }
        }
        return text
    }

    /// `text` with a capital and a full stop.
    static func sentence(_ text: String) -> String { text.prefix(1).uppercased() + text.dropFirst() + "." }

    /// A default value in code; a described one as prose.
    static func markdownDefault(_ option: AgentOption) -> String {
        switch option.defaultValue {
        case .value(let value): "`\(value)`"
        case .described(let text): markdown(text)
        }
    }

    /// Prose with the characters Markdown would read as markup escaped (`<td>` would vanish as an HTML tag).
    static func markdown(_ text: String) -> String {
        var escaped = ""
        for character in text {
            if "<>*|".contains(character) { escaped.append("\\") }
            escaped.append(character)
        }
        return escaped
    }
}
