"""Word lists and sentence templates shared by the IQ generators and their solvers.

The solvers read the same templates (the surface form the model sees) but none of a generator's
internal state: they parse the prompt. Everything here is plain data.
"""

# Symbols for symbolic mapping: rare BMP glyphs (geometric, technical, Old-Cyrillic) that an
# ordinary corpus almost never holds; each label becomes two of them.
SYMBOL_GLYPHS = "⟟⧖⨳⩫⫷⬲⭍⯑⸎ꙮ⺃⻤⦻⧗⨷⩨⫸⬳⭆⯒"

NAMES = {"en": ["Anna", "Ben", "Carl", "Dora", "Emil", "Fay", "Gus", "Hana", "Ivan", "Jill", "Kurt", "Lena",
                "Mona", "Nils", "Otto", "Pia"],
         "zh": ["小明", "小红", "小刚", "小丽", "小华", "小芳", "小军", "小燕", "小强", "小梅", "小龙", "小雪"]}

# (English comparative, Chinese adjective) for "A is taller than B" / "A比B高"
COMPARATIVES = {"en": ["taller", "older", "faster", "heavier", "stronger"], "zh": ["高", "大", "快", "重", "强"]}

LOCATIONS = {"en": ["kitchen", "garden", "office", "hallway", "bedroom", "bathroom", "cellar", "garage"],
             "zh": ["厨房", "花园", "办公室", "走廊", "卧室", "浴室", "地下室", "车库"]}

OBJECTS = {"en": ["apple", "football", "milk", "book", "key", "lamp"],
           "zh": ["苹果", "足球", "牛奶", "书", "钥匙", "台灯"]}

COLOURS = {"en": ["red", "blue", "green", "yellow", "white", "black"],
           "zh": ["红", "蓝", "绿", "黄", "白", "黑"]}

FRUITS = {"en": ["apple", "pear", "plum", "fig", "lime", "grape", "peach", "melon"],
          "zh": ["苹果", "梨", "李子", "无花果", "柠檬", "葡萄", "桃子", "西瓜"]}

# replace-word: sentences with one slot; the item's word A fills it and must be changed to B.
NOUNS = {"en": ["cat", "dog", "bird", "horse", "fish", "lion", "goat", "frog", "bear", "duck"],
         "zh": ["猫", "狗", "鸟", "马", "鱼", "狮子", "山羊", "青蛙", "熊", "鸭子"]}
SENTENCES = {"en": ["The {} sat near the old door.", "I saw a {} in the morning.", "My friend likes the small {}.",
                    "A {} walked across the road.", "We fed the {} before dinner.", "The {} slept under the tree.",
                    "Nobody expected a {} at the party.", "Her {} is very quiet today."],
             "zh": ["那只{}坐在旧门旁边。", "我早上看见了一只{}。", "我的朋友喜欢那只小{}。", "一只{}走过了马路。",
                    "我们在晚饭前喂了{}。", "那只{}在树下睡觉。", "没有人想到聚会上会有{}。", "她的{}今天很安静。"]}

# Noise for anti-interference: sentences that no fact pattern matches.
NOISE = {"en": ["The number {d} was written on a {c} card.", "A {c} kite drifted over the hills.",
                "Someone hummed a tune about {d} ships.", "The radio mentioned {d} millimetres of rain.",
                "A {c} umbrella leaned against the fence."],
         "zh": ["一张{c}色卡片上写着数字{d}。", "一只{c}色的风筝飘过了山坡。", "有人哼着一首关于{d}艘船的歌。",
                "收音机说今天降雨{d}毫米。", "一把{c}色的雨伞靠在篱笆上。"]}

# Facts of the bAbI-like stories: (English, Chinese) templates.
MOVES = {"en": ["{p} went to the {l}.", "{p} moved to the {l}.", "{p} travelled to the {l}.",
                "{p} journeyed to the {l}."],
         "zh": ["{p}去了{l}。", "{p}走到了{l}。", "{p}来到了{l}。", "{p}跑到了{l}。"]}
TAKES = {"en": ["{p} picked up the {o}.", "{p} got the {o}.", "{p} grabbed the {o}."],
         "zh": ["{p}拿起了{o}。", "{p}拿走了{o}。", "{p}捡起了{o}。"]}
DROPS = {"en": ["{p} dropped the {o}.", "{p} put down the {o}.", "{p} left the {o}."],
         "zh": ["{p}放下了{o}。", "{p}扔下了{o}。", "{p}留下了{o}。"]}

WORDS = {
    "en": {"answer": "Answer:", "output": "Output:", "input": "Input:", "premise": "Premise:",
           "hypothesis": "Hypothesis:", "passage": "Passage:", "question": "Question:", "review": "Review:"},
    "zh": {"answer": "答案：", "output": "输出：", "input": "输入：", "premise": "前提：", "hypothesis": "假设：",
           "passage": "短文：", "question": "问题：", "review": "评论："},
}
