"""Builder: on a small source file per language the pairs are exactly the documented functions,
the documentation text is clean, and the document does not contain the documentation."""

from __future__ import annotations

import gzip
import json
import textwrap

import pytest

from sparse_ray.data.cornstack import RowRules, parse_line
from sparse_ray.tools.build import BuildOptions, build, code_tokens, first_paragraph
from sparse_ray.tools.extract import GRAMMARS, clean_comment, pairs

# Each fixture: one documented function, one documented method (in a class/impl/module where the
# language has them), one function without documentation and one with a plain (non-doc) comment.
FIXTURES = {
    "python": (
        '''
        import json


        def load_settings(path):
            """Read the settings file and return its values.

            More text.
            """
            with open(path) as fh:
                return json.load(fh)


        class Store:
            @staticmethod
            def save_record(record, target):
                """Write one record to the target stream."""
                target.write(json.dumps(record))
                return len(record)


        # a plain comment
        def undocumented(x):
            return x
        ''',
        [
            (
                "Read the settings file and return its values.",
                "def load_settings(path):\n    with open(path) as fh:\n        return json.load(fh)",
            ),
            (
                "Write one record to the target stream.",
                "@staticmethod\ndef save_record(record, target):\n    target.write(json.dumps(record))\n"
                "    return len(record)",
            ),
        ],
    ),
    "java": (
        """
        class Store {
            /**
             * Read the settings file and return its values.
             *
             * @param path the file
             * @return the values
             */
            public Map<String, String> loadSettings(String path) {
                return parse(read(path));
            }

            // plain comment, not Javadoc
            int undocumented() { return 1; }

            /** Write one {@code record} to the target stream. */
            @Override
            public int saveRecord(Record record) {
                return target.write(record);
            }

            /** Interface-style declaration without a body. */
            abstract void noBody();
        }
        """,
        [
            (
                "Read the settings file and return its values.",
                "public Map<String, String> loadSettings(String path) {\n    return parse(read(path));\n}",
            ),
            (
                "Write one record to the target stream.",
                "@Override\npublic int saveRecord(Record record) {\n    return target.write(record);\n}",
            ),
        ],
    ),
    "javascript": (
        """
        /**
         * Read the settings file and return its values.
         * @param {string} path
         */
        export function loadSettings(path) {
          return parse(read(path));
        }

        class Store {
          /** Write one record to the target stream. */
          saveRecord(record) {
            return this.target.write(record);
          }
        }

        /* not a doc comment */
        function undocumented() { return 1; }
        """,
        [
            (
                "Read the settings file and return its values.",
                "export function loadSettings(path) {\n  return parse(read(path));\n}",
            ),
            ("Write one record to the target stream.", "saveRecord(record) {\n  return this.target.write(record);\n}"),
        ],
    ),
    "typescript": (
        """
        /**
         * Read the settings file and return its values.
         */
        export function loadSettings(path: string): Settings {
          return parse(read(path));
        }

        export class Store {
          /** Write one record to the target stream. */
          saveRecord(record: Row): number {
            return this.target.write(record);
          }
        }

        function undocumented(): number { return 1; }
        """,
        [
            (
                "Read the settings file and return its values.",
                "export function loadSettings(path: string): Settings {\n  return parse(read(path));\n}",
            ),
            (
                "Write one record to the target stream.",
                "saveRecord(record: Row): number {\n  return this.target.write(record);\n}",
            ),
        ],
    ),
    "go": (
        """
        package store

        // LoadSettings reads the settings file and returns its values.
        // The file must exist.
        func LoadSettings(path string) Settings {
        \treturn parse(read(path))
        }

        // SaveRecord writes one record to the target stream.
        func (s *Store) SaveRecord(r Record) int {
        \treturn s.target.Write(r)
        }

        // detached comment

        func undocumented() int { return 1 }
        """,
        [
            (
                "LoadSettings reads the settings file and returns its values. The file must exist.",
                "func LoadSettings(path string) Settings {\n\treturn parse(read(path))\n}",
            ),
            (
                "SaveRecord writes one record to the target stream.",
                "func (s *Store) SaveRecord(r Record) int {\n\treturn s.target.Write(r)\n}",
            ),
        ],
    ),
    "rust": (
        """
        /// Read the settings file and return its values.
        ///
        /// # Errors
        /// When the file is missing.
        #[inline]
        pub fn load_settings(path: &str) -> Settings {
            parse(read(path))
        }

        impl Store {
            /// Write one record to the target stream.
            pub fn save_record(&mut self, record: Record) -> usize {
                self.target.write(record)
            }
        }

        // plain comment
        fn undocumented() -> u32 { 1 }
        """,
        [
            (
                "Read the settings file and return its values.",
                "pub fn load_settings(path: &str) -> Settings {\n    parse(read(path))\n}",
            ),
            (
                "Write one record to the target stream.",
                "pub fn save_record(&mut self, record: Record) -> usize {\n    self.target.write(record)\n}",
            ),
        ],
    ),
    "cpp": (
        """
        /**
         * @brief Read the settings file and return its values.
         */
        template <typename T>
        T load_settings(const std::string& path) {
            return parse<T>(read(path));
        }

        class Store {
          public:
            /// Write one record to the target stream.
            int save_record(const Record& record) {
                return target.write(record);
            }
        };

        // plain comment
        int undocumented() { return 1; }
        """,
        [
            (
                "Read the settings file and return its values.",
                "template <typename T>\nT load_settings(const std::string& path) {\n"
                "    return parse<T>(read(path));\n}",
            ),
            (
                "Write one record to the target stream.",
                "int save_record(const Record& record) {\n    return target.write(record);\n}",
            ),
        ],
    ),
    "php": (
        """
        <?php
        /**
         * Read the settings file and return its values.
         *
         * @param string $path
         */
        function load_settings(string $path): array {
            return parse(read($path));
        }

        class Store {
            /** Write one record to the target stream. */
            public function saveRecord($record): int {
                return $this->target->write($record);
            }

            /** @return int */
            public function tagsOnly(): int { return 1; }
        }
        """,
        [
            (
                "Read the settings file and return its values.",
                "function load_settings(string $path): array {\n    return parse(read($path));\n}",
            ),
            (
                "Write one record to the target stream.",
                "public function saveRecord($record): int {\n    return $this->target->write($record);\n}",
            ),
        ],
    ),
    "ruby": (
        """
        # frozen_string_literal: true

        # Read the settings file and return its values.
        def load_settings(path)
          parse(read(path))
        end

        class Store
          # Write one record to the target stream.
          def self.save_record(record)
            target.write(record)
          end

          def undocumented
            1
          end
        end
        """,
        [
            ("Read the settings file and return its values.", "def load_settings(path)\n  parse(read(path))\nend"),
            (
                "Write one record to the target stream.",
                "def self.save_record(record)\n  target.write(record)\nend",
            ),
        ],
    ),
}


def test_every_language_has_a_fixture():
    assert set(FIXTURES) == set(GRAMMARS)


@pytest.mark.parametrize("language", sorted(FIXTURES))
def test_pairs_are_exactly_the_documented_functions(language):
    """Compared after ``first_paragraph``, the query text the builder keeps."""
    source, expected = FIXTURES[language]
    found = [(first_paragraph(doc), code) for doc, code in pairs(language, textwrap.dedent(source).encode())]
    assert found == expected
    for doc, code in found:
        assert first_paragraph(doc) not in code  # the documentation is not inside the document


def test_code_tokens_split_identifiers():
    assert code_tokens("def parseHTTPResponse(raw_bytes):") == ["parse", "http", "response", "raw", "bytes"]


def test_clean_comment_keeps_the_description_only():
    javadoc = "/**\n * Returns the {@link Map} of values.\n * <p>Details.\n * @param x the x\n */"
    assert clean_comment([javadoc]) == "Returns the Map of values."
    assert clean_comment(["/** @return int */"]) == ""
    assert clean_comment(["/// First line.", "/// Second line."]) == "First line.\nSecond line."


@pytest.mark.parametrize("language", sorted(FIXTURES))
def test_build_writes_shards_the_reader_accepts(language, tmp_path):
    """Twelve copies of the fixture with renamed identifiers: BM25 finds negatives among them."""
    source, _ = FIXTURES[language]
    source = textwrap.dedent(source)
    src = tmp_path / "src"
    src.mkdir()
    suffix = GRAMMARS[language].suffixes[0]
    for i in range(12):
        text = source
        for word in ("settings", "record", "Settings", "Record", "target"):
            text = text.replace(word, f"{word}{i}x")
        text = text.replace("settings file", f"settings file number {i}")
        (src / f"mod{i}{suffix}").write_text(text)
    report = build(language, [src], tmp_path / "out", BuildOptions(num_negatives=3, consistency_k=30, min_code_lines=2))
    assert report["rows"] > 0 and report["shards"] == 1
    rows = [json.loads(line) for line in gzip.open(tmp_path / "out" / "shard-00000.jsonl.gz", "rt")]
    assert len(rows) == report["rows"]
    rules = RowRules(language, 3, 0.0, 2000, 20000)
    assert all(parse_line(json.dumps(r).encode(), rules)["reason"] == "" for r in rows)
    assert all(r["document"] not in r["negatives"] for r in rows)


def test_build_rejects_unknown_language_and_empty_tree(tmp_path):
    with pytest.raises(ValueError, match="no extractor for 'kotlin'"):
        build("kotlin", [tmp_path], tmp_path / "out", BuildOptions())
    with pytest.raises(ValueError, match=r"no rust files \(\.rs\)"):
        build("rust", [tmp_path], tmp_path / "out", BuildOptions())


def test_a_teacher_mines_and_scores_by_its_cosine(tmp_path):
    """The bundled MiniLM as the teacher (the untrained tiny BERT scores every pair alike)."""
    from sentence_transformers import SentenceTransformer

    from sparse_ray.config import resolve_base_model

    minilm = resolve_base_model("minilm")
    source = textwrap.dedent(FIXTURES["python"][0])
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        (src / f"mod{i}.py").write_text(source.replace("settings", f"settings{i}x").replace("record", f"rec{i}y"))
    opts = BuildOptions(num_negatives=3, consistency_k=30, min_code_lines=2, teacher=minilm)
    report = build("python", [src], tmp_path / "out", opts)
    rows = [json.loads(line) for line in gzip.open(tmp_path / "out" / "shard-00000.jsonl.gz", "rt")]
    assert report["rows"] == len(rows) > 0
    teacher = SentenceTransformer(minilm, device="cpu")
    for row in rows[:3]:
        q, *docs = teacher.encode([row["query"], row["document"], *row["negatives"]], normalize_embeddings=True)
        cosines = [float(q @ d) for d in docs]
        assert row["document_score"] == pytest.approx(cosines[0], abs=1e-3)
        assert row["negative_scores"] == pytest.approx(cosines[1:], abs=1e-3)
        assert row["negative_scores"] == sorted(row["negative_scores"], reverse=True)
        assert all(s < 0.95 * row["document_score"] for s in row["negative_scores"])  # the false-negative guard
