"""Request analysis: what a chat request asks for (its context type) and what it needs from a model.

Pure and in-process: plain values in, a frozen `Analysis` out; no Django, no network, no database, stdlib only, so
selection can run it on every request and tests need no fixtures.

The context type comes from weighted, explainable rules rather than a trained model (docs/analysis.md says why and
how well it does on prompts it was not tuned on):

- the latest substantive user turn is analysed (trivial follow-ups such as "thanks" or "go on" are skipped, and a
  short follow-up borrows from the turn before it), then the system prompt adds its cues at a lower weight;
- structural signals come first: fenced or unfenced code, a diff, a stack trace or error output, equations and
  LaTeX, a pasted data table;
- lexical cues (words, word stems, phrases and CJK substrings in a dozen languages) carry weights per type; in a long
  message only its head and tail are read for cues, where the instruction sits around a pasted document;
- a few interactions settle what single cues cannot: given code turns "explain"/"compare"/"summarise" into a code
  review and "rewrite"/"add"/"port" into code generation; a natural-language target ("into German") keeps a
  translation a translation, a programming one makes it code.

Every window is bounded (`WINDOW_CHARS` from each end of a turn), so a 100k-token prompt costs about what a few
thousand characters cost. `confidence` grows with the winning score and its margin over the runner-up; below
`LOW_CONFIDENCE` the analysis reports `general_chat` for scoring and keeps its raw guess in `detected_type`.
"""

import dataclasses
import json
import math
import re

CONTEXT_TYPES = (
    "code_generation",
    "code_review",
    "math",
    "analysis",
    "creative_writing",
    "summarization",
    "translation",
    "question_answering",
    "general_chat",
)
REQUIREMENTS = ("tools", "vision", "json", "streaming")

LOW_CONFIDENCE = 0.4  # below this (a tie, or no cue at all) the analysis falls back to general_chat for scoring
WINDOW_CHARS = 2000  # a turn longer than twice this is read as its first and last WINDOW_CHARS characters
INSTRUCTION_LONG = 250  # prose longer than this, over several lines, is read as instruction around content
INSTRUCTION_CHARS = 600  # an edge paragraph up to this long may be the instruction
SHORT_PROSE_CHARS = 2 * INSTRUCTION_CHARS + 200  # prose up to this long on one line is read whole
TOPIC_ONLY_CAP = 2.0  # most code_generation gets from technical nouns without a verb asking for code
WORD_PROBLEM_CHARS = 400  # numbers plus "how many/much/long..." make a word problem only in a short message
LEAD_IN_CHARS = 120  # "Translate into German: <text>": a lead-in up to this long ending with a colon is the ask
TABLE_LINES = 40  # rows of a pasted table are looked for in this many lines at each end
HIT_CACHE_SIZE = 20000  # memoised token lookups
ASK_SCORE_CAP = 3.0  # one strong cue is all an edge paragraph needs to read as the instruction
SHORT_ASK_CHARS = 150  # an edge paragraph this short is read as (part of) the instruction
CONTENT_CHARS = 400  # pasted content is read only this far into each end
CONTENT_WEIGHT = 0.4  # cues in pasted content count for less than cues in the instruction around it
CONTENT_CAP = 1.5  # and at most this much per type: content only tips a vague instruction
SYSTEM_CHARS = 1500  # cues are read in this many characters at each end of the system prompt
SYSTEM_WEIGHT = 0.8  # a system prompt says what the task is, but less directly than the user's own turn
FOLLOW_UP_WEIGHT = 0.6  # a short, weakly cued follow-up borrows this share of the previous user turn's cues
FOLLOW_UP_CHARS = 120
MAX_LOOKBACK = 4  # user turns examined when the latest ones are trivial

# Prompt-token estimate (no tokenizer here): ~4 characters per token for ASCII text, ~1 token per CJK/kana/hangul
# character, ~2.5 characters per token for other scripts (Cyrillic, Greek, Arabic, accented runs), plus OpenAI's
# per-message overhead. Checked against tiktoken's cl100k_base in docs/analysis.md.
CHARS_PER_TOKEN = 4
OTHER_CHARS_PER_TOKEN = 2.5
TOKENS_PER_MESSAGE = 4
TOKENS_PER_REPLY = 3
IMAGE_TOKENS = 765  # a 1024x1024 image at detail "high" (or "auto"); "low" costs 85
IMAGE_TOKENS_LOW = 85

_T = {name: index for index, name in enumerate(CONTEXT_TYPES)}
_CHAT = _T["general_chat"]
_QA = _T["question_answering"]

# ---------------------------------------------------------------------------------------------------------------
# Lexical cues. One string per (type, weight); entries are separated by spaces and are:
#   word        an exact lower-case token            stem*      any token starting with stem (4+ characters)
#   *tail       any long token ending with tail       a_b_c      a phrase of consecutive tokens
#   any entry containing CJK, kana or hangul characters is matched as a substring.
# Tokens are runs of letters (apostrophes and hyphens split them: "what's" is what_s, "tl;dr" is tl_dr).
# ---------------------------------------------------------------------------------------------------------------
_GREETING_WORDS = "hi hello hey heya hiya howdy yo hallo bonjour salut coucou hola ciao olá oi привет здравствуй cześć"
_CUES = {
    "code_generation": {
        3: "refactor* 重构 リファクタ",
        2.5: "implement* implément* implementier* zaimplementuj реализуй реализовать 实现 实装 実装 구현",
        1.5: "function functions func method methods script scripts snippet regex regexp regular_expression endpoint "
        "endpoints component hook cli algorithm struct enum decorator dockerfile makefile crud one_liner unit_test "
        "unit_tests fonction fonctions funktion función funzione função функци* funkcj* méthode methode método "
        "metodo метод programme programm programa programma программ* requête abfrage código codice kod код "
        "скрипт skript komponente componente компонент algorithme algorithmus algoritmo алгоритм "
        "函数 代码 程序 脚本 组件 接口 コード 関数 プログラム スクリプト コンポーネント 코드 함수 프로그램 스크립트",
        1: "code class classes query program api library module schema bot server website webpage html css "
        "workflow pipeline test tests cron command unittest classe klasse clase класс app apps route routes json "
        "yaml xml backend frontend database orm sqlalchemy models microservice",
    },
    "code_review": {
        3: "debug* segfault* traceback stack_trace stacktrace code_review 调试 报错 デバッグ 디버그",
        2.5: "bug bugs buggy race_condition deadlock memory_leak bogue баг 버그 バグ",
        2: "sanity_check crash crashes crashed crashing exception exceptions idiomatic vulnerab* code_smell lint "
        "linter depur* отлад* 审查 レビュー 리뷰",
        1.5: "error errors erreur erreurs fehler errore erro ошибк* błąd review reviewer fix broken not_working "
        "doesn_t_work undefined segmentation compile compiler thread_safe thread_safety complexity "
        "permission_denied am_i_getting i_m_getting keeps_failing fails failing 错误 エラー 오류",
        1: "wrong issue issues null nil warning revisa* überprüf* проверь dangerous risky safe 问题",
    },
    "math": {
        3: "equation* équation* ecuaci* equazion* equaç* gleichung* уравнени* równani* integral* intégral* "
        "integrale интеграл* całk* derivative* derivad* derivat* dériv* ableitung* производн* pochodn* "
        "probability probabilit* probabilidad* wahrscheinlichkeit* вероятност* prawdopodob* determinant eigen* "
        "standard_deviation how_many_ways grenzwert* expected_value random_variable fair_die fair_coin show_that "
        "montre_que montrer_que zeige_dass muestra_que demuestra_que mostra_che покажи_что "
        "方程 积分 導数 导数 求导 概率 確率 積分 微分 방정식 미분 적분 확률",
        2.5: "calculat* berechn* вычисл* oblicz* bereken* prove proofs theorem* lemma irrational irrazional* "
        "irrationnel* irracional* polynom* quadratic logarithm* sqrt square_root radice_quadrata racine_carrée "
        "raíz_cuadrada hypotenuse calculus trigonometr* permutation* combinator* dimostr* démontr* demuestr* "
        "beweis* докаж* udowodnij compute 计算 計算 最小值 最大值 계산",
        2: "solve solving solved résou* resuelv* risolv* löse реши решите rozwiąż calcul* calcol* proof divisib* "
        "factori* fraction* exponent* perimeter radius circumference variance arithmetic algebra* geometry math "
        "maths mathematics mathematical mathe* matemátic* matematic* математи* dice combinations converge "
        "converges convergent diverge* 证明 等于",
        1.5: "factor simplify simplif* matrix matrices primes prime integer integers percent percentage percentages "
        "prozent porcentaje percentuale процент* area diameter triangle median limit compound compounded "
        "compounding sum coins odds distribution sequence series expectation",
        1: "average rational vector vectors numbers odd digits decimal sin cos ln x mph speed interest minimum "
        "maximum limite chance",
    },
    "analysis": {
        3: "analy* análi* analiz* analis* анализ* проанализ* swot pros_and_cons 分析 优缺点 利弊 분석 장단점",
        2.5: "compar* vergleich* сравн* porówn* vergelijk* confront* evaluat* évalu* valut* avali* bewert* beurteil* "
        "assess* critiqu* disadvantag* downside* downsides weakness* weaknesses trade_offs trade_off tradeoff* "
        "root_cause sentiment inconvénient* nachteil* desventaja* svantaggi desvantage* недостат* "
        "比较 比較 对比 评估 評価 デメリット 短所 비교 평가",
        2: "advantag* upside* strengths versus vs implication* implicaci* auswirkung* trend trends tendenc* "
        "tendanc* tendenz* interpret* risks risques riesgos rischi riscos risiken риски рисков classify weigh "
        "examin* feasib* viability schlussfolger* which_is_better avantage* vorteil* ventaja* vantaggi vantage* "
        "преимуществ* минусы zalety wady plusy_i_minusy stärken schwächen fortalezas debilidades points_forts "
        "points_faibles punti_di_forza punti_deboli pontos_fortes pontos_fracos сильные_стороны слабые_стороны "
        "słabe_strony mocne_strony voordelen nadelen these_numbers this_data these_figures stand_out stands_out "
        "themes 趋势 优劣 メリット 長所",
        1.5: "impact impacts pattern patterns insight insights risk benefits beneficio* benefício* critical* "
        "argument arguments conclusion* conclusions categori* prioriti* breakdown break_it_down metrics kpi kpis "
        "correlat* strategy strategic factors competitive recurring complaints survey the_numbers the_data "
        "the_figures ryzyk* плюсы оцени 影响",
        1: "data statistics statistical market causes diagnose consider better feedback reviews",
        0.5: "analyst analysts",
    },
    "creative_writing": {
        3: "poem* poet* poème* poésie gedicht* poesia poesía poesie стихотворени* wiersz* haiku* sonnet* soneto* "
        "limerick* lyric* fable* fairy_tale slogan* tagline* screenplay* screenwrit* storyteller* "
        "once_upon_a_time short_story cover_letter kurzgeschichte märchen cuento* racconto* favola сказк* "
        "opowiadani* bajk* liedtext novelist copywrit* caption* jingle* motto villanelle* ode "
        "诗 诗歌 小说 歌词 写一首 作文 俳句 詩 歌詞 소설",
        2.5: "rephras* reword* paraphras* reformul* umformulier* перефразир* "
        "story stories tale tales song songs chanson canción canzone canção песн* piosenk* rhym* conte relato "
        "рассказ* erzählung verhaal eulog* monolog* bedtime fiction* product_description blog_post "
        "故事 物語 小説 이야기 写一篇 写一封",
        2: "novel verse rap dialogue dialogues scene chapter fantasy catchy toast speech compose creative essay "
        "blog stih* стих* lied paroles letra punchy ad_copy proofread* brainstorm* names_for more_formal "
        "more_concise sound_more rédige* rédiger redacta* verfasse*",
        1.5: "character characters plot imagine draft letter email mail birthday wedding invitation histoire "
        "geschichte historia storia história writer author instagram tweet puns rewrite concise polish tone",
        1: "write writing écris écrire escribe escribir schreib* scrivi escreva escrever напиши napisz schrijf "
        "funny heartfelt",
    },
    "summarization": {
        3: "summar* tldr sum_up sum_this_up sum_it_up resumen resumir resúm* recap* condens* synops* gist résum* "
        "zusammenfass* kurzfassung riassum* riassunt* samenvat* streszcz* podsumuj* podsumowa* *zusammenfassung "
        "总结 總結 概括 摘要 要約 요약",
        2.5: "highlights key_takeaways short_version synthès* synthétis* sintetiz* sintesi резюм* перескаж* "
        "概述 まとめ 概要",
        2: "resum* key_points main_points takeaways shorten* précis headline nutshell кратк* суммир* 归纳 要点",
        1.5: "shorter overview digest boil action_items one_sentence one_paragraph couple_of_lines few_lines "
        "few_sentences few_words überblick 정리",
        1: "brief briefly bullet bullets abstract outline",
    },
    "translation": {
        3: "translat* tradu* tradú* übersetz* ubersetz* vertaal* przetłumacz* tłumacz* перевед* перевест* перевод* "
        "*übersetzung 翻译 翻譯 翻訳 訳して 訳す 英訳 和訳 번역",
        2.5: "how_do_you_say how_would_you_say how_to_say how_do_i_say how_would_i_say comment_dit_on wie_sagt_man "
        "cómo_se_dice como_se_dice come_si_dice como_se_diz localize localise localization localisation "
        "怎么说 怎麼說 译成 译为",
        1: "英文 中文 英语 日语 法语 德语 英語に 日本語に 영어로 한국어로",
    },
    "question_answering": {
        2.5: "according_to based_on_the_text based_on_the_passage selon d_après laut según secondo согласно wonder "
        "wondered wondering",
        2: "explain* explique* explica* erklär* spiega* объясни* wyjaśnij tell_me_about define definition "
        "difference_between différence_entre unterschied diferencia differenza diferença разница "
        "what_is_the_difference factual 为什么 為什麼 是什么 是什麼 なぜ どうして とは 왜",
        1.5: "curious meaning facts who_was who_is who_invented who_wrote what_does what_causes history_of "
        "什么 什麼 谁 誰 どこ いつ どれくらい 教えて 무엇 어디 누구 언제",
        1: "answer questions question how_does invented discovered history capital 怎么 如何 哪 多少 ですか どう "
        "어떻게 뭐",
        0.5: "吗 呢 何",
    },
    "general_chat": {
        3: "how_are_you how_are_u how_s_it_going what_s_up whats_up wie_geht wie_gehts ça_va comment_ça_va qué_tal "
        "cómo_estás como_estas come_stai como_vai tudo_bem как_дела your_day cheer_me_up good_night guten_morgen "
        "buenos_días how_are_things mood "
        "你好 你好吗 心情 聊天 お元気 您好 最近怎么样 こんにちは こんばんは おはよう 元気 안녕",
        2.5: _GREETING_WORDS + " good_morning good_evening let_s_chat just_wanted_to_say who_are_you "
        "your_favourite your_favorite you_ever lol haha hahaha lmao",
        2: "chat chatting charlar plaudern bavarder chiacchierare поболтать bored ennuie langweilig aburrido lonely "
        "joke jokes your_end yourself about_you do_you_like are_you_ok i_feel feeling sad excited nervous omg yay "
        "无聊 哈哈 雑談 기분 심심",
        1.5: "ugh mondays do_you are_you have_you you_think fun weekend tonight dinner movie recommend thanks thank "
        "tired happy great_day long_day rough i_just i_finally guess_what",
        1: "i_m i_had i_am my_day friend cook music casual friendly companion",
    },
}

# Words that start a code-producing request (with a technical noun or given code they mean code_generation).
_GREETINGS = frozenset(_GREETING_WORDS.split() + "good_morning good_evening 你好 您好 こんにちは 안녕".split())
_GEN_VERBS = frozenset(
    "write create implement build generate make develop add convert port rewrite extend modify "
    "change optimize optimise need give show produce design scaffold knock whip put "
    "écris écrire écrivez rédige crée créer créez génère ajoute convertis réécris développe "
    "schreib schreibe schreiben erstelle erstellen generiere baue füge konvertiere "
    "escribe escribir crea crear genera haz añade agrega convierte reescribe programa "
    "scrivi crea genera aggiungi converti riscrivi "
    "escreva escrever crie gere faça adicione converta reescreva preciso "
    "schrijf maak напиши создай сгенерируй добавь перепиши napisz stwórz dodaj".split()
)
_GEN_VERBS_FIRST = frozenset(("code", "program"))  # verbs only when they open the sentence ("Code a game")
_GEN_CJK = ("写一个", "写个", "编写", "生成", "创建", "作って", "作成", "書いて", "만들어", "작성")
_QUESTION_WORDS = frozenset(
    "what who whom whose when where why how which "
    "quoi qui quand où pourquoi comment quel quelle quels quelles combien qu "
    "was wer wann wo warum wieso weshalb wie welche welcher welches wieviel "
    "qué quién quiénes cuándo dónde cómo cuál cuáles cuánto cuántos cuántas "
    "cosa chi dove perché quale quali quanti quante "
    "quem onde porque qual quais quantos quantas "
    "wat wanneer waar waarom hoe welke "
    "что кто когда где почему зачем как какой какая какие сколько "
    "kto kiedy gdzie dlaczego jak ile".split()
)
_MODALS = frozenset("can could would will may kannst könntest können könnten peux pourrais pouvez pourriez".split())
_YOU = frozenset("you u ya du sie tu vous".split())
_MODALS_WITH_YOU = frozenset(
    "puedes podrías puede podría puoi potresti può potrebbe pode podes poderia можешь можете могли".split()
)
_QUANTITY_WORDS = frozenset("find calculate compute combien wieviel wieviele cuánto cuántos quanto quanti quantos "
                            "сколько".split())
_HOW_QUANTITY = frozenset("many much long far fast old big tall heavy".split())
_HOW_MODALS = frozenset("do can could would should does did".split())
_HOW_SUBJECTS = frozenset("i you we one".split())
_TRIVIAL = frozenset(
    "thanks thank you thx ty tysm ok okay k kk cool nice great perfect awesome got it yes no yep yeah nope sure "
    "go on continue more please pls plz keep going next and then alright right good fine makes sense much very "
    "so a lot merci beaucoup danke schön gracias grazie obrigado obrigada спасибо bitte weiter sigue continúa "
    "continua continuez vale d accord".split()
)
_TRIVIAL_CJK = frozenset("谢谢 多谢 继续 好的 ありがとう 続けて 続き 감사합니다 고마워 계속".split())

# Names that mean programming wherever they appear (words such as "rust", "spring" or "express" do not).
_PROGRAMMING_WORDS = frozenset(
    "python javascript typescript java kotlin golang ruby php perl scala haskell elixir erlang clojure lua matlab "
    "fortran cobol sql mysql postgresql postgres sqlite bash powershell zsh html css angular svelte django fastapi "
    "nodejs laravel numpy pytorch tensorflow pygame jquery docker dockerfile kubernetes terraform graphql jest "
    "pytest junit verilog solidity".split()
)
# Targets that make "translate this to X" or "port it to X" a code task.
_CODE_TARGET_WORDS = _PROGRAMMING_WORDS | frozenset("go c rust swift dart julia react vue rails spring shell".split())
_CODE_PREPOSITIONS = frozenset("to into in using with".split())
_LANGUAGE_WORDS = frozenset(
    "english french german spanish italian portuguese dutch russian chinese mandarin cantonese japanese korean "
    "arabic hindi turkish polish swedish norwegian danish finnish greek hebrew vietnamese thai indonesian "
    "ukrainian czech romanian hungarian persian farsi urdu bengali swahili latin catalan tagalog "
    "anglais français francais allemand espagnol italien portugais néerlandais chinois japonais coréen russe arabe "
    "englisch englische deutsch deutsche französisch französische spanisch spanische italienisch italienische "
    "russisch russische chinesisch chinesische japanisch japanische portugiesisch portugiesische "
    "inglés ingles español francés alemán italiano portugués chino japonés ruso "
    "inglese francese tedesco spagnolo portoghese cinese giapponese russo "
    "inglês português francês alemão espanhol "
    "engels nederlands duits frans spaans "
    "английский английского русский французский немецкий испанский итальянский китайский японский "
    "angielski polski niemiecki francuski hiszpański".split()
)
# "into German", "ins Französische", "em espanhol", "into natural-sounding French", "para o inglês".
_LANGUAGE_PREPOSITIONS = frozenset("to into in en ins auf al a para em naar на na from".split())
_LANGUAGE_FILLERS = frozenset(
    "o het the natural sounding fluent formal informal casual proper simple plain idiomatic brazilian european "
    "british american canadian mexican modern standard correct polite good business".split()
)

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TOKEN_RE = re.compile(rf"[^\W\d_{_CJK}]+|[.!?:;,\n。！？：，、]")
_CJK_RE = re.compile(f"[{_CJK}]")
_WIDE_RUN_RE = re.compile(f"[{_CJK}]+")
_BOUNDARY = frozenset(".!?:;,\n。！？：，、")

_FENCE_RE = re.compile(r"```[^\n]*\n.*?(?:```|\Z)", re.S)
# A line is code when it opens with a keyword or declaration, ends like a statement or block, or holds an operator
# that prose does not use (case matters: "Return the ..." is prose, "return x;" is code).
_CODE_START_RE = re.compile(
    r"(?:async\s+)?(?:def|class|fn|func|function|impl|struct|enum|trait|interface|package|namespace)\s+\w+\s*[(:<{\[]"
    r"|(?:import|from)\s+[\w.]+(?:\s+import\s+[\w.*, ]+)?\s*;?$"
    r"|#(?:include|define|!)"
    r"|(?:public|private|protected|static|final|const|let|var|val|auto|int|void|char|float|double|bool|"
    r"String|std::\w+)\b.*[=;({]"
    r"|(?:if|elif|else if|while|for|switch|catch|with)\s*\(|(?:if|elif|else|while|for|try|except)\b.*:$"
    r"|(?:return|yield|await|raise|throw|print|println|console\.log|echo|puts)\b.*[;)\"'\w\]]$"
    r"|(?://|/\*|\*/)"
    r"|[A-Za-z_]\w*=\S+$|(?:done|fi|esac|then|do|end)$"
    r"|(?:cd|rm|ls|mkdir|cp|mv|sudo|apt|apt-get|pip|npm|yarn|git|curl|wget|chmod|chown|export|source|gzip|tar|"
    r"grep|sed|awk|docker|kubectl)\s+[-$./~\w]"
    r"|</?[a-zA-Z][\w-]*(?:\s[^>]*)?>"
    r"|(?:SELECT|INSERT INTO|UPDATE|DELETE FROM|CREATE TABLE|ALTER TABLE|FROM|WHERE|LEFT JOIN|JOIN|GROUP BY|"
    r"ORDER BY)\b"
)
_CODE_OPERATORS = ("=>", "::", ":=", "===", "!==", "&&", "||", "++", "+=", "-=", "$(", "${")
_SHELL_VAR_RE = re.compile(r"\$[A-Za-z_]\w*")
_INLINE_SQL_RE = re.compile(r"\b(?:SELECT|UPDATE|DELETE)\b[^\n]{1,200}?\b(?:FROM|WHERE|SET)\b")
_INLINE_CODE_RE = re.compile(r"`[^`\n]+`")
# Error output, found by plain substring tests first (patterns only where a literal cannot say it).
_ERROR_LITERALS = (
    "Traceback (most recent call last)", "npm ERR!", "Segmentation fault", "core dumped", "Uncaught ",
    "undefined reference", "cannot find symbol", "panic:", "ERROR", "FATAL", "CRITICAL", "SEVERE", "Error: ",
    '", line ', "error[E",
)  # fmt: skip
_JAVA_FRAME_RE = re.compile(r"^\s+at [\w$.<>/]+[(:]", re.M)
_RUST_ERROR_RE = re.compile(r"^error(?:\[\w+\])?:|^\s*-->\s*\S+:\d+", re.M)
_DIFF_RE = re.compile(r"^(?:diff --git |@@ -\d+(?:,\d+)? \+\d+|--- a/|\+\+\+ b/|--- \S+\n\+\+\+ \S+)", re.M)
_SPACED_ROW_RE = re.compile(r"\S\s{2,}-?\d[\d.,]*\s?[%kKmMbB]?\s{2,}-?\d")
_LATEX_RE = re.compile(
    r"\\(?:frac|int|sum|sqrt|lim|prod|cdot|times|infty|partial|binom|alpha|beta|theta|lambda|sigma|pi|sin|cos|"
    r"tan|log|ln)\b|\$[^$\n]*[\\^_{][^$\n]*\$"
)
_MATH_CHARS = frozenset("^=+*/×÷−²³∫∑∏√∞≤≥≠±∂∇π[-")
_MATH_EXPR_RE = re.compile(
    r"[a-zA-Z0-9)]\s*\^\s*[-\w(]|[a-zA-Z0-9)][²³]|\d\s*[×÷*/^+]\s*\d|\d\s+[-−+]\s+\d|[∫∑∏√∞≤≥≠±∂∇π]"
    r"|[\w)]\s*[-−+*/×]\s*[\w(]+\s*=\s*[-\w(?]|=\s*\?|\[\[\s*-?\d|\b[a-z](?:_\w+)?\s*=\s*[-\d(][^\n=]*[-+*/^]"
)
_SEPARABLE_SUMMARY_RE = re.compile(r"\bfass\w*\b[^.!?\n]{0,80}\bzusammen\b", re.I)
_MONEY_OR_PERCENT_RE = re.compile(r"[$€£¥]\s?\d|\d\s?(?:%|percent\b|€|\$)")
_NUMBER_RE = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*%?")
_EMOJI_RE = re.compile("[\U0001f300-\U0001faff\u2600-\u27bf]")
_LANG_NAMES = "|".join(sorted(_LANGUAGE_WORDS, key=len, reverse=True))
_QUOTED_TARGET_RE = re.compile(
    rf"[\"'“‘«„「][^\"“”‘’«»„「」\n]{{1,300}}[\"'”’»“」][\s,.:]*(?:in|into|to|en|auf|al|ins|em|на)\s+(?:{_LANG_NAMES})\b",
    re.I,
)

_NO_FLAGS = {
    "gen_verb": False,  # a code-producing verb opens a sentence
    "question": False,  # an interrogative opens a sentence, or the text ends with "?" (not "Could you ...?")
    "quantity": False,  # "how many", "how much", "find", "calculate", ...
    "how_to": False,  # "how to", "how do I", ...
    "tech": 0,  # how many code_generation cues the text has
    "target_language": False,  # "into German", "en français", ...
    "code_target": False,  # "to Rust", "in Go", ...
}
_MISSING = object()
_HIT_CACHE = {}


def _compile_cues():
    """Return the lookup tables built from _CUES: exact, prefix, suffix, phrase and CJK (by first character)."""
    exact, prefix, suffix, phrases, cjk = {}, {}, {}, {}, {}
    for type_name, tiers in _CUES.items():
        for weight, entries in tiers.items():
            hit = (_T[type_name], float(weight))
            for entry in entries.split():
                if _CJK_RE.search(entry):
                    cjk.setdefault(entry[0], []).append((entry, hit))
                elif "_" in entry:
                    words = tuple(entry.split("_"))
                    phrases.setdefault(words[0], []).append((words[1:], entry, hit))
                elif entry.endswith("*"):
                    prefix.setdefault(entry[:-1], []).append(hit)
                elif entry.startswith("*"):
                    suffix.setdefault(entry[1:], []).append(hit)
                else:
                    exact.setdefault(entry, []).append(hit)
    return (
        exact,
        prefix,
        sorted({len(stem) for stem in prefix}, reverse=True),
        suffix,
        sorted({len(tail) for tail in suffix}, reverse=True),
        phrases,
        cjk,
    )


_EXACT, _PREFIX, _PREFIX_LENGTHS, _SUFFIX, _SUFFIX_LENGTHS, _PHRASES, _CJK_CUES = _compile_cues()
_CJK_FIRST_CHARS = frozenset(_CJK_CUES)


@dataclasses.dataclass(frozen=True, slots=True)
class Analysis:
    """What a chat request asks for and what it needs from the model that serves it."""

    context_type: str  # the type used for scoring: general_chat when confidence is low
    detected_type: str  # the raw best guess
    confidence: float
    low_confidence: bool
    requirements: tuple[str, ...]  # in REQUIREMENTS order
    prompt_tokens: int
    max_output_tokens: int
    needed_context_window: int
    signals: tuple[str, ...]  # the strongest cues behind detected_type, for explanations

    def as_dict(self):
        """Return the analysis as plain JSON-ready values."""
        return {
            "context_type": self.context_type,
            "detected_type": self.detected_type,
            "confidence": self.confidence,
            "low_confidence": self.low_confidence,
            "requirements": list(self.requirements),
            "prompt_tokens": self.prompt_tokens,
            "needed_context_window": self.needed_context_window,
            "signals": list(self.signals),
        }


class _Scores:
    """Per-type scores with the cues that produced them."""

    __slots__ = ("values", "cues")

    def __init__(self):
        self.values = [0.0] * len(CONTEXT_TYPES)
        self.cues = []

    def add(self, index, weight, cue):
        self.values[index] += weight
        self.cues.append((weight, index, cue))

    def merge(self, other, factor, cap=None):
        for index, value in enumerate(other.values):
            self.values[index] += value * factor if cap is None else min(value * factor, cap)
        self.cues.extend((weight * factor, index, cue) for weight, index, cue in other.cues)


def analyse(body):
    """Return the Analysis of a validated chat-completions request body."""
    messages = body.get("messages") or []
    turn, previous, system = _pick_turns(messages)
    scores, has_code = _classify(turn, previous, system)
    detected, confidence = _decide(scores.values)
    low = confidence < LOW_CONFIDENCE
    prompt_tokens = estimate_prompt_tokens(body)
    max_output = _max_output_tokens(body)
    return Analysis(
        context_type="general_chat" if low else detected,
        detected_type=detected,
        confidence=confidence,
        low_confidence=low,
        requirements=requirements(body),
        prompt_tokens=prompt_tokens,
        max_output_tokens=max_output,
        needed_context_window=prompt_tokens + max_output,
        signals=_signals(scores, _T[detected]),
    )


def requirements(body):
    """Return the capabilities the request needs, in REQUIREMENTS order."""
    needed = set()
    if body.get("tools") or body.get("functions") or body.get("tool_choice") is not None:
        needed.add("tools")
    if body.get("function_call") is not None:
        needed.add("tools")
    for message in body.get("messages") or ():
        if not isinstance(message, dict):
            continue
        if message.get("role") in ("tool", "function") or message.get("tool_calls") or message.get("function_call"):
            needed.add("tools")
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") in ("image_url", "input_image", "image"):
                    needed.add("vision")
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") in ("json_object", "json_schema"):
        needed.add("json")
    if body.get("stream") is True:
        needed.add("streaming")
    return tuple(name for name in REQUIREMENTS if name in needed)


def estimate_prompt_tokens(body):
    """Return a fast estimate of the request's prompt tokens (see the constants above for the rule)."""
    total = TOKENS_PER_REPLY
    for message in body.get("messages") or ():
        if not isinstance(message, dict):
            continue
        total += TOKENS_PER_MESSAGE
        content = message.get("content")
        if isinstance(content, str):
            total += _text_tokens(content)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    continue
                if isinstance(part.get("text"), str):
                    total += _text_tokens(part["text"])
                elif part.get("type") in ("image_url", "input_image", "image"):
                    total += _image_tokens(part)
        for key in ("tool_calls", "function_call"):
            if message.get(key):
                total += _text_tokens(json.dumps(message[key], ensure_ascii=False, default=str))
    for key in ("tools", "functions"):
        if body.get(key):
            total += _text_tokens(json.dumps(body[key], ensure_ascii=False, default=str))
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("json_schema"):
        total += _text_tokens(json.dumps(response_format["json_schema"], ensure_ascii=False, default=str))
    return total


def _text_tokens(text):
    """Return the estimated tokens of one text, sampling at most 2 x WINDOW_CHARS characters of a long one."""
    length = len(text)
    if not length:
        return 0
    if text.isascii():
        return -(-length // CHARS_PER_TOKEN)
    sample = text if length <= 2 * WINDOW_CHARS else text[:WINDOW_CHARS] + text[-WINDOW_CHARS:]
    ascii_chars = len(sample.encode("ascii", "ignore"))
    wide = sum(map(len, _WIDE_RUN_RE.findall(sample)))
    other = len(sample) - ascii_chars - wide
    per_char = (ascii_chars / CHARS_PER_TOKEN + wide + other / OTHER_CHARS_PER_TOKEN) / len(sample)
    return math.ceil(length * per_char)


def _image_tokens(part):
    """Return the tokens one image part costs: detail "low" is cheap, anything else is counted as high."""
    image = part.get("image_url")
    detail = image.get("detail") if isinstance(image, dict) else part.get("detail")
    return IMAGE_TOKENS_LOW if detail == "low" else IMAGE_TOKENS


def _max_output_tokens(body):
    """Return max_completion_tokens, else max_tokens, else 0 (a non-negative int)."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


def _text_of(message):
    """Return the text of a message's content (text parts joined), bounded to its two ends."""
    content = message.get("content")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        text = "\n".join(
            part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    else:
        return ""
    if len(text) > 2 * WINDOW_CHARS:
        text = text[:WINDOW_CHARS] + "\n" + text[-WINDOW_CHARS:]
    return text


def _is_trivial(text):
    """Return True for a follow-up that carries no task of its own ("thanks", "go on", "ok, makes sense")."""
    stripped = text.strip()
    if len(stripped) > 40:
        return False
    if _CJK_RE.search(stripped):
        return stripped.rstrip("!！。.~ ") in _TRIVIAL_CJK
    words = _TOKEN_RE.findall(stripped.lower())
    words = [word for word in words if word not in _BOUNDARY]
    return all(word in _TRIVIAL for word in words)


def _pick_turns(messages):
    """Return (latest substantive user text, the user text before it, system text)."""
    system_parts, user_texts = [], []
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role in ("system", "developer"):
            system_parts.append(message)
        elif role == "user":
            user_texts.append(message)
    system = "\n".join(_text_of(message) for message in system_parts)
    if len(system) > 2 * SYSTEM_CHARS:
        system = system[:SYSTEM_CHARS] + "\n" + system[-SYSTEM_CHARS:]
    turns = [_text_of(message) for message in user_texts[-MAX_LOOKBACK:]]
    if not turns:
        return "", "", system
    index = len(turns) - 1
    while index > 0 and _is_trivial(turns[index]):
        index -= 1
    if _is_trivial(turns[index]):
        index = len(turns) - 1
    previous = turns[index - 1] if index > 0 else ""
    return turns[index], previous, system


def _structure(text):
    """Return (prose without code, code flag, structural cues) for one user turn."""
    cues = []
    fenced = "```" in text and _FENCE_RE.search(text) is not None
    prose = _FENCE_RE.sub("\n", text) if fenced else text
    newlines = prose.count("\n")
    unfenced = False
    if newlines >= 2:
        lines = prose.split("\n")
        code = [_is_code_line(line) for line in lines]
        code_lines = sum(code)
        unfenced = code_lines >= 3 and code_lines * 5 >= len(lines)
        if unfenced:
            prose = "\n".join(line for line, is_code in zip(lines, code, strict=True) if not is_code)
    trace = _has_error_output(text)
    diff = ("@@ -" in text or "diff --git" in text or "--- " in text) and _DIFF_RE.search(text) is not None
    inline_sql = any(word in text for word in ("SELECT", "UPDATE", "DELETE")) and bool(_INLINE_SQL_RE.search(text))
    has_code = fenced or unfenced or diff or inline_sql
    if has_code:
        cues.append((_T["code_review"], 2.5, "given_code"))
    if trace:
        cues.append((_T["code_review"], 3.0, "error_output"))
    if diff:
        cues.append((_T["code_review"], 1.5, "diff"))
    if "`" in prose and _INLINE_CODE_RE.search(prose):
        cues.append((_T["code_generation"], 0.5, "inline_code"))
    if not has_code and newlines >= 2 and _table_rows(text) >= 3:
        cues.append((_T["analysis"], 2.5, "data_table"))
    return prose, has_code or trace, cues


def _is_code_line(line):
    """Return True for a line that reads as source code or a shell command."""
    stripped = line.strip()
    if not stripped:
        return False
    if stripped[-1] in ";{" or stripped[0] in "}])" or _CODE_START_RE.match(stripped):
        return True
    if any(operator in stripped for operator in _CODE_OPERATORS):
        return True
    return "$" in stripped and _SHELL_VAR_RE.search(stripped) is not None


def _has_error_output(text):
    """Return True when text holds a stack trace, a compiler or runtime error, or error log lines."""
    if any(literal in text for literal in _ERROR_LITERALS):
        return True
    for word in ("Error", "Exception"):
        # TypeError, NullPointerException, ...: the word glued to a capitalised name.
        start = text.find(word, 1)
        while start != -1:
            if text[start - 1].isalpha():
                return True
            start = text.find(word, start + 1)
    if ("  at " in text or "\tat " in text) and _JAVA_FRAME_RE.search(text):
        return True
    return ("-->" in text or "error" in text) and _RUST_ERROR_RE.search(text) is not None


def _table_rows(text):
    """Return how many of the first and last TABLE_LINES lines look like rows of a data table."""
    lines = text.split("\n", TABLE_LINES)[:TABLE_LINES] + text.rsplit("\n", TABLE_LINES)[1:]
    rows = 0
    for line in lines:
        if line.count(",") >= 3 or line.count("\t") >= 2 or line.count("|") >= 3 or line.count(";") >= 3:
            rows += 1
        elif "  " in line and _SPACED_ROW_RE.search(line):
            rows += 1
    return rows


def _split_instruction(prose, cache):
    """Return [(text, is_instruction)]: where the ask sits in a message, and the pasted material around it.

    A short message is all instruction, except for the material after a short lead-in ending with a colon
    ("Translate into German: <text>"). In a long one the candidates are its first and last paragraph (or line,
    or INSTRUCTION_CHARS / 2 characters when neither is short); the one with the stronger task cues, helped by a
    closing ":" or "?", is the instruction, the other one joins it only if it looks like an ask too. The rest is
    content, read only CONTENT_CHARS into each end. Cue scores computed on the way are kept in cache.
    """
    prose = prose.strip()
    if len(prose) <= SHORT_PROSE_CHARS and (len(prose) <= INSTRUCTION_LONG or "\n" not in prose):
        colon = _lead_in_end(prose)
        if colon:
            return [(prose[:colon], True), (prose[colon + 1 :], False)]
        return [(prose, True)]
    half = INSTRUCTION_CHARS // 2
    head = _edge(prose[: INSTRUCTION_CHARS * 2], first=True) or prose[:half]
    tail = _edge(prose[-INSTRUCTION_CHARS * 2 :], first=False) or prose[-half:]
    middle = prose[len(head) : len(prose) - len(tail)]
    if len(middle) > 2 * CONTENT_CHARS:
        middle = middle[:CONTENT_CHARS] + "\n" + middle[-CONTENT_CHARS:]
    head_ask, tail_ask = _looks_like_ask(head), _looks_like_ask(tail)
    parts = [(head, head_ask), (middle, False), (tail, tail_ask)]
    if head_ask and tail_ask:
        return parts
    # At most one edge reads as an ask on its looks; let the task cues decide which one is the instruction.
    head_score = _ask_score(head, head_ask, cache)
    tail_score = _ask_score(tail, tail_ask, cache)
    head_wins = head_score > tail_score or (head_score == tail_score and head_ask)
    return [(head, head_wins), (middle, False), (tail, not head_wins)]


def _lead_in_end(prose):
    """Return the index of the colon ending a short lead-in of several words, or 0."""
    for colon_char in (":", "："):
        colon = prose.find(colon_char, 0, LEAD_IN_CHARS)
        if colon > 3 and len(prose) - colon > 15 and prose[colon + 1 : colon + 2] in (" ", "\n", "\t", "") and (
            " " in prose[:colon].strip() or _CJK_RE.search(prose[:colon])
        ):
            return colon
    return 0


def _ask_score(text, looks_like_ask, cache):
    """Return how strongly a paragraph reads as the instruction: its best task score, capped, plus its looks.

    The cap keeps a long pasted paragraph full of cue words ("a poet wrote a story and a song") from outranking
    a short ask next to it ("Translate the text above into Italian.").
    """
    scores, _ = cache[text] = _cue_scores(text)
    return min(max(scores.values), ASK_SCORE_CAP) + (1.5 if looks_like_ask else 0.0)


def _looks_like_ask(text):
    """Return True for a paragraph that is short or introduces or questions the content."""
    return len(text) <= SHORT_ASK_CHARS or text.rstrip()[-1:] in (":", "?", "：", "？")


def _edge(text, first):
    """Return the first (or last) paragraph of text, or its first (or last) line, if short enough to be an ask."""
    for separator in ("\n\n", "\n"):
        parts = text.strip().split(separator)
        if len(parts) > 1:
            part = (parts[0] if first else parts[-1]).strip()
            if 0 < len(part) <= INSTRUCTION_CHARS:
                return part
    return ""


def _token_hits(token):
    """Return the cue hits of one token (exact, then longest stem, then tail), memoised."""
    hits = _HIT_CACHE.get(token, _MISSING)
    if hits is not _MISSING:
        return hits
    hits = _EXACT.get(token)
    if hits is None and len(token) >= 4:
        for length in _PREFIX_LENGTHS:
            if length <= len(token):
                hits = _PREFIX.get(token[:length])
                if hits:
                    break
        if hits is None and len(token) >= 8:
            for length in _SUFFIX_LENGTHS:
                hits = _SUFFIX.get(token[-length:])
                if hits:
                    break
    if len(_HIT_CACHE) >= HIT_CACHE_SIZE:
        _HIT_CACHE.clear()  # hostile input cannot grow it without bound; the common words come back at once
    _HIT_CACHE[token] = hits
    return hits


def _cue_scores(text):
    """Return the lexical Scores of a text, with the flags the interaction rules need."""
    scores = _Scores()
    flags = dict(_NO_FLAGS)
    if not text:
        return scores, flags
    lowered = text.lower().replace("tl;dr", "tldr")
    tokens = _TOKEN_RE.findall(lowered)
    seen = set()
    position = 0
    for i, token in enumerate(tokens):
        if token in _BOUNDARY:
            position = 0
            continue
        position += 1
        if position <= 3:
            if token in _GEN_VERBS or (position == 1 and token in _GEN_VERBS_FIRST):
                flags["gen_verb"] = True
            if position <= 2 and token in _QUESTION_WORDS:
                flags["question"] = True
        hits = _token_hits(token)
        if hits and token not in seen:
            seen.add(token)
            for index, weight in hits:
                scores.add(index, weight, token)
        following = _PHRASES.get(token)
        if following:
            for rest, name, (index, weight) in following:
                if name not in seen and tuple(tokens[i + 1 : i + 1 + len(rest)]) == rest:
                    seen.add(name)
                    scores.add(index, weight, name)
        if token in _QUANTITY_WORDS:
            flags["quantity"] = True
        elif token == "how" and i + 1 < len(tokens):
            after = tokens[i + 1]
            if after in _HOW_QUANTITY:
                flags["quantity"] = True
            elif after == "to" or (after in _HOW_MODALS and i + 2 < len(tokens) and tokens[i + 2] in _HOW_SUBJECTS):
                flags["how_to"] = True
        if token in _PROGRAMMING_WORDS and "programming_language" not in seen:
            seen.add("programming_language")
            scores.add(_T["code_generation"], 1.5, "programming_language")
        if token in _LANGUAGE_WORDS and position > 1:
            back = i - 1
            while back > i - 4 and back > 0 and tokens[back] in _LANGUAGE_FILLERS:
                back -= 1
            if tokens[back] in _LANGUAGE_PREPOSITIONS:
                flags["target_language"] = True
        if token in _CODE_TARGET_WORDS and position > 1 and tokens[i - 1] in _CODE_PREPOSITIONS:
            flags["code_target"] = True
    if "zusammen" in lowered and _SEPARABLE_SUMMARY_RE.search(lowered):
        scores.add(_T["summarization"], 3.0, "fasse_zusammen")
    if "c++" in lowered or "c#" in lowered:
        if "programming_language" not in seen:
            scores.add(_T["code_generation"], 1.5, "programming_language")
    if not text.isascii() and _CJK_RE.search(text):
        for char in _CJK_FIRST_CHARS.intersection(text):
            for cue, (index, weight) in _CJK_CUES[char]:
                if cue in text:
                    scores.add(index, weight, cue)
        if any(verb in text for verb in _GEN_CJK):
            flags["gen_verb"] = True
        if "多少" in text:
            flags["quantity"] = True
    flags["tech"] = sum(1 for _, index, _ in scores.cues if index == _T["code_generation"])
    if text.rstrip().endswith(("?", "？")) and not _is_request(tokens):
        flags["question"] = True
    return scores, flags


def _is_request(tokens):
    """Return True when the last sentence asks the assistant to do something ("Could you ...?", "Peux-tu ...?")."""
    start = len(tokens) - 1
    while start > 0 and tokens[start - 1] not in _BOUNDARY:
        start -= 1
    while start < len(tokens) and tokens[start] in _BOUNDARY:
        start += 1
    opening = tokens[start : start + 2]
    if not opening:
        return False
    if len(opening) == 2 and opening[0] in _MODALS and opening[1] in _YOU:
        return True
    return opening[0] in _MODALS_WITH_YOU


def _math_cues(text, flags, scores, table=False):
    """Add equations, LaTeX, arithmetic and word-problem cues found in text."""
    if ("\\" in text or "$" in text) and _LATEX_RE.search(text):
        scores.add(_T["math"], 3.0, "latex")
    if not _MATH_CHARS.isdisjoint(text):
        expressions = len(_MATH_EXPR_RE.findall(text))
        if expressions:
            scores.add(_T["math"], min(2.0 + 0.5 * (expressions - 1), 3.5), "expression")
    if not table and len(text) <= WORD_PROBLEM_CHARS and len(_NUMBER_RE.findall(text)) >= 2:
        if flags["quantity"] or (flags["question"] and _MONEY_OR_PERCENT_RE.search(text)):
            scores.add(_T["math"], 2.0, "word_problem")


def _turn_scores(text):
    """Return (Scores, has_code) for one user turn: structure first, then cues in the instruction."""
    prose, has_code, structural = _structure(text)
    scores = _Scores()
    flags = dict(_NO_FLAGS)
    instruction, content = [], []
    cache = {}
    for part, is_instruction in _split_instruction(prose, cache):
        if not is_instruction:
            content.append(part)
            continue
        instruction.append(part)
        part_scores, part_flags = cache.get(part) or _cue_scores(part)
        scores.merge(part_scores, 1.0)
        for name, value in part_flags.items():
            flags[name] = flags[name] or value
    if content:
        scores.merge(_cue_scores("\n".join(content))[0], CONTENT_WEIGHT, cap=CONTENT_CAP)
    instruction = "\n".join(instruction)
    for index, weight, cue in structural:
        scores.add(index, weight, cue)
    if not has_code:
        short = len(prose) <= SHORT_PROSE_CHARS
        table = any(cue == "data_table" for _, _, cue in structural)
        _math_cues(prose if short else instruction, flags, scores, table=table)
    values = scores.values
    if flags["target_language"]:
        scores.add(_T["translation"], 2.0, "target_language")
        if _QUOTED_TARGET_RE.search(instruction):
            scores.add(_T["translation"], 2.0, "quoted_text_target")
    if not instruction.isascii() and _EMOJI_RE.search(instruction):
        scores.add(_CHAT, 1.0, "emoji")
    if flags["question"]:
        scores.add(_T["question_answering"], 1.5, "question")
    if has_code:
        _given_code(scores, flags)
    elif flags["tech"] and flags["gen_verb"]:
        scores.add(_T["code_generation"], 2.5, "write_code")
    elif flags["tech"] and flags["how_to"]:
        scores.add(_T["code_generation"], 2.0, "how_to_code")
    else:
        # Technical nouns alone ("Compare Python and Go for a CLI tool") name the topic, not the task: without a
        # verb that asks for code they never outweigh a task cue such as "compare".
        values[_T["code_generation"]] = min(values[_T["code_generation"]], TOPIC_ONLY_CAP)
    if values[_T["translation"]] and not flags["target_language"] and flags["code_target"]:
        scores.add(_T["code_generation"], values[_T["translation"]], "code_translation")
        values[_T["translation"]] = 0.0
    return scores, has_code


def _given_code(scores, flags):
    """Re-read cues when the turn carries code: explaining or judging it is a review, changing it is generation."""
    values = scores.values
    for name in ("question_answering", "analysis", "summarization"):
        index = _T[name]
        if values[index]:
            scores.add(_T["code_review"], values[index], f"about_code:{name}")
            values[index] = 0.0
    values[_T["math"]] *= 0.3
    values[_CHAT] = 0.0
    if flags["gen_verb"]:
        scores.add(_T["code_generation"], 3.5, "change_code")
    if values[_T["translation"]] and not flags["target_language"]:
        scores.add(_T["code_generation"], values[_T["translation"]], "code_translation")
        values[_T["translation"]] = 0.0


def _classify(turn, previous, system):
    """Return (Scores, has_code) for the chosen turn, its short follow-up context and the system prompt."""
    scores, has_code = _turn_scores(turn)
    if previous and len(turn.strip()) < FOLLOW_UP_CHARS and max(scores.values) < 2.5:
        before, _ = _turn_scores(previous)
        scores.merge(before, FOLLOW_UP_WEIGHT)
    if system:
        system_scores, system_flags = _cue_scores(system)
        if system_flags["tech"] and system_flags["gen_verb"]:
            system_scores.add(_T["code_generation"], 1.5, "system_code")
        if has_code:
            _given_code(system_scores, dict(_NO_FLAGS, target_language=system_flags["target_language"]))
        scores.merge(system_scores, SYSTEM_WEIGHT)
    values = scores.values
    # A task cue outweighs the small talk around it ("Hi! Can you translate ..."); a bare question only outweighs
    # the greeting in front of it ("Hello, what is ...?"), not chat about the assistant ("how are things with you?").
    if max(value for index, value in enumerate(values) if index not in (_CHAT, _QA)) >= 2.5:
        values[_CHAT] *= 0.4
    elif values[_QA] >= 2.5:
        values[_CHAT] -= 0.6 * sum(weight for weight, index, cue in scores.cues if index == _CHAT and cue in _GREETINGS)
    values[_CHAT] += 0.5  # prior: a request with no cue at all is chat
    return scores, has_code


def _decide(values):
    """Return (best type, confidence) from the per-type scores."""
    best = max(range(len(values)), key=lambda index: (values[index], -index))
    top = values[best]
    runner_up = max((value for index, value in enumerate(values) if index != best), default=0.0)
    strength = top / (top + 1.0)
    margin = (top - runner_up) / top if top > 0 else 0.0
    return CONTEXT_TYPES[best], round(strength * (0.5 + 0.5 * margin), 3)


def _signals(scores, index, limit=5):
    """Return the strongest distinct cues that voted for the type at index."""
    ranked = sorted((cue for cue in scores.cues if cue[1] == index), key=lambda cue: (-cue[0], cue[2]))
    names = []
    for _, _, name in ranked:
        if name not in names:
            names.append(name)
        if len(names) == limit:
            break
    return tuple(names)
